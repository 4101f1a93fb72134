//! Command-line flags.

use std::time::Duration;

use crate::scenarios::Scenario;

/// The usage text printed by `--help` and after a bad flag.
pub(crate) const USAGE: &str = "\
usage: lockbench [--secs N] [--warmup N] [--url URL] [--redlock-url URL]...
                 [--cluster-url URL]... [--json] [--scenario NAME]...
                 [--library NAME]...

  --secs N          measure each run for N seconds (default 5)
  --warmup N        warm each run up for N seconds first (default 1)
  --url URL         use the Redis server at URL instead of starting one
                    (its command counters then include any other traffic)
  --redlock-url URL give exactly three, for the three independent servers
                    of `redlock3`, instead of starting three
  --cluster-url URL a node of an existing Redis Cluster for `cluster`,
                    instead of starting one (three primaries with a
                    replica each); repeat to give more seed nodes
  --json            print one JSON object per result row instead of tables
  --scenario NAME   run only this scenario; repeat for several
                    (raw, uncontended, contended, redlock3, cluster,
                    keyed, watchdog, queue, cron; default all but cron, which
                    runs max(N, 20) one-second ticks twice)
  --library NAME    run only this library's rows; repeat for several
                    (raw, soloist, soloist-unfenced, rslock, rslock-1ms,
                    redlock, redlock-1ms, soloist-1node, soloist-semaphore,
                    soloist-semaphore-busy, handrolled, handrolled-fused,
                    apalis, soloist-skew2m, soloist-stepwise; default all; `soloist` includes
                    `soloist-1node`, the single-node rows of `redlock3` and
                    `cluster`; `soloist-unfenced` acquires with
                    `acquire_unfenced` in `uncontended` and `cluster`;
                    `soloist-semaphore` is a 4-permit semaphore's acquire
                    and release in `uncontended`, `soloist-semaphore-busy`
                    the same with 3 of its permits held elsewhere;
                    `handrolled`, `handrolled-fused` and `apalis` are
                    `queue` baselines; `soloist-skew2m` is `cron` with one
                    replica's clock 2 minutes fast; `soloist-stepwise` is
                    `keyed` with runs one step at a time; only when named:
                    alt-script, alt-lean, alt-multi, alt-fcall,
                    alt-unfenced, ways to take a fenced lock on a bare
                    connection in `uncontended` (alt-fcall loads a function
                    library `lbalt` into the server))
";

/// How many servers `redlock3` runs on.
pub(crate) const REDLOCK_NODES: usize = 3;

/// What to run and how to report it.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    /// How long each run is measured.
    pub(crate) secs: Duration,
    /// How long each run warms up first.
    pub(crate) warmup: Duration,
    /// An existing server to use; `None` starts one.
    pub(crate) url: Option<String>,
    /// Existing servers for `redlock3`, exactly three; empty starts three.
    pub(crate) redlock_urls: Vec<String>,
    /// Seed nodes of an existing Redis Cluster for `cluster`; empty starts one.
    pub(crate) cluster_urls: Vec<String>,
    /// JSON lines rather than tables.
    pub(crate) json: bool,
    /// The scenarios to run, in their usual order.
    pub(crate) scenarios: Vec<Scenario>,
    /// The library labels to run; empty runs all.
    pub(crate) libraries: Vec<String>,
}

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Command {
    /// Run the benchmark.
    Run(Args),
    /// Print the usage text.
    Help,
}

impl Args {
    /// Parses the flags (without the program name).
    pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
        let mut parsed = Args {
            secs: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            url: None,
            redlock_urls: Vec::new(),
            cluster_urls: Vec::new(),
            json: false,
            scenarios: Vec::new(),
            libraries: Vec::new(),
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let mut value =
                |flag: &str| args.next().ok_or_else(|| format!("`{flag}` needs a value"));
            match flag.as_str() {
                "--secs" => parsed.secs = seconds("--secs", &value("--secs")?, 1)?,
                "--warmup" => parsed.warmup = seconds("--warmup", &value("--warmup")?, 0)?,
                "--url" => parsed.url = Some(value("--url")?),
                "--redlock-url" => parsed.redlock_urls.push(value("--redlock-url")?),
                "--cluster-url" => parsed.cluster_urls.push(value("--cluster-url")?),
                "--json" => parsed.json = true,
                "--scenario" => {
                    let name = value("--scenario")?;
                    let scenario = Scenario::from_name(&name).ok_or_else(|| {
                        let known: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                        format!(
                            "unknown scenario `{name}`; expected one of {}",
                            known.join(", ")
                        )
                    })?;
                    if !parsed.scenarios.contains(&scenario) {
                        parsed.scenarios.push(scenario);
                    }
                }
                "--library" => parsed.libraries.push(value("--library")?),
                "-h" | "--help" => return Ok(Command::Help),
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        if !parsed.redlock_urls.is_empty() && parsed.redlock_urls.len() != REDLOCK_NODES {
            return Err(format!(
                "`--redlock-url` must be given exactly {REDLOCK_NODES} times, got {}",
                parsed.redlock_urls.len()
            ));
        }
        parsed.scenarios = if parsed.scenarios.is_empty() {
            Scenario::ALL
                .into_iter()
                .filter(|scenario| scenario.is_default())
                .collect()
        } else {
            Scenario::ALL
                .into_iter()
                .filter(|scenario| parsed.scenarios.contains(scenario))
                .collect()
        };
        Ok(Command::Run(parsed))
    }
}

/// A whole number of seconds, at least `min`.
fn seconds(flag: &str, value: &str, min: u64) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(secs) if secs >= min => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "`{flag}` takes a whole number of seconds of at least {min}, got `{value}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command, String> {
        Args::parse(line.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn defaults_run_everything_for_five_seconds() {
        let Ok(Command::Run(args)) = parse("") else {
            panic!("an empty command line must run");
        };
        assert_eq!(args.secs, Duration::from_secs(5));
        assert_eq!(
            args.scenarios,
            Scenario::ALL[..Scenario::ALL.len() - 1].to_vec()
        );
        assert!(!args.scenarios.contains(&Scenario::Cron));
        assert!(!args.json && args.url.is_none() && args.redlock_urls.is_empty());
        assert!(args.cluster_urls.is_empty() && args.scenarios.contains(&Scenario::Cluster));
    }

    #[test]
    fn scenarios_filter_and_keep_their_order() {
        let Ok(Command::Run(args)) =
            parse("--scenario watchdog --scenario raw --json --secs 2 --library soloist")
        else {
            panic!("valid flags must parse");
        };
        assert_eq!(args.scenarios, vec![Scenario::Raw, Scenario::Watchdog]);
        assert_eq!(args.libraries, vec!["soloist".to_owned()]);
        assert_eq!(args.secs, Duration::from_secs(2));
        assert!(args.json);
    }

    #[test]
    fn redlock3_is_selectable_and_takes_three_urls() {
        let Ok(Command::Run(args)) = parse(
            "--scenario redlock3 --redlock-url redis://a --redlock-url redis://b \
             --redlock-url redis://c",
        ) else {
            panic!("three redlock URLs must parse");
        };
        assert_eq!(args.scenarios, vec![Scenario::Redlock3]);
        assert_eq!(args.redlock_urls.len(), 3);
    }

    #[test]
    fn cluster_is_selectable_and_takes_any_number_of_seed_urls() {
        let Ok(Command::Run(args)) = parse("--scenario cluster --scenario uncontended") else {
            panic!("`--scenario cluster` must parse");
        };
        assert_eq!(
            args.scenarios,
            vec![Scenario::Uncontended, Scenario::Cluster]
        );
        assert!(args.cluster_urls.is_empty());

        let Ok(Command::Run(args)) =
            parse("--cluster-url redis://a:7000 --scenario cluster --cluster-url redis://b:7001")
        else {
            panic!("repeated `--cluster-url` must parse");
        };
        assert_eq!(
            args.cluster_urls,
            vec!["redis://a:7000".to_owned(), "redis://b:7001".to_owned()]
        );
    }

    #[test]
    fn cron_runs_only_when_asked_for() {
        let Ok(Command::Run(args)) = parse("--scenario cron --scenario queue") else {
            panic!("`--scenario cron` must parse");
        };
        assert_eq!(args.scenarios, vec![Scenario::Queue, Scenario::Cron]);
    }

    #[test]
    fn queue_is_selectable_and_runs_by_default() {
        let Ok(Command::Run(args)) = parse("--scenario queue") else {
            panic!("`--scenario queue` must parse");
        };
        assert_eq!(args.scenarios, vec![Scenario::Queue]);
        assert!(Scenario::ALL.contains(&Scenario::Queue));
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        for (line, needle) in [
            ("--secs", "needs a value"),
            ("--secs 0", "at least 1"),
            ("--scenario nope", "expected one of raw"),
            ("--frobnicate", "unknown argument"),
            ("--redlock-url a --redlock-url b", "exactly 3 times, got 2"),
            ("--cluster-url", "`--cluster-url` needs a value"),
        ] {
            match parse(line) {
                Err(message) => assert!(message.contains(needle), "{line}: {message}"),
                Ok(_) => panic!("`{line}` must be refused"),
            }
        }
    }
}
