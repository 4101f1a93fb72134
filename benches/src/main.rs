//! `lockbench`: what a soloist lock costs, measured against the bare Redis
//! commands underneath it and against peer crates, on a real `redis-server`.
//!
//! Run with `cargo run --release -p soloist-benches --bin lockbench`
//! (`-- --help` for the flags). Unless given `--url`, it starts its own
//! `redis-server` on a free loopback port and stops it at the end; likewise
//! three more for `redlock3` unless given `--redlock-url` three times, and
//! a Redis Cluster of three primaries with a replica each for `cluster`
//! unless given `--cluster-url`.
//!
//! Every run warms up, then is measured for `--secs` in total. The runs of
//! `raw`, `uncontended`, `contended`, `redlock3` and `cluster`'s lock cycles
//! are measured in one-second slices, round robin, so that all of them
//! share the machine's good and bad moments alike (see `rounds.rs`);
//! `watchdog` runs on its own after them, then `cluster`'s leases, then
//! `queue`, in rounds of its own, and `cron` last, on the wall clock.
//!
//! Scenarios:
//! - `raw`: `SET NX PX` plus a compare-and-delete script on one connection,
//!   no library: the ceiling for any Redis lock. 1 and 64 workers.
//! - `uncontended`: acquire and release at once on keys nobody else wants;
//!   soloist with its defaults (watchdog on), rslock and redlock. 1 and 64 workers.
//! - `contended`: 8 workers over 4 independent clients take turns on one key,
//!   waiting as long as needed; acquisitions, hand-offs, wait latency and
//!   Redis commands per acquisition, with mutual exclusion checked throughout.
//! - `redlock3`: the uncontended 1-worker cycle on a Redlock of three
//!   independent servers (soloist, rslock, redlock), beside soloist's
//!   single-node cycle on one of them; commands summed over the three.
//! - `cluster`: the uncontended 64-worker cycle on a Redis Cluster beside
//!   the same on the main server (`soloist-1node`), and `watchdog`'s 10,000
//!   leases on the cluster; commands and CPU summed over the primaries.
//! - `watchdog`: 10,000 leases of 3 s held by one client; renewal calls,
//!   Redis commands and CPU spent keeping them alive.
//! - `queue`: messages per second through one Redis Streams consumer group,
//!   with 1 and 4 consumers: bare `XREADGROUP` + `XACK` loops (`raw`),
//!   hand-rolled idempotent consumers (`SET NX` dedupe keys, then `XACK`:
//!   `handrolled`, `handrolled-fused`) and apalis-redis workers (`apalis`,
//!   on a job queue of its own kind) against soloist `Worker`s consuming a
//!   keyed job with dedupe whose body only returns; each run drains a
//!   freshly filled stream.
//! - `cron` (only when asked for): a per-second cron job on five soloist
//!   replicas sharing the server, with every clock right and then with one
//!   replica's clock two minutes fast; latency from a tick's due time to its
//!   body starting, p50/p99/max over `--secs` ticks (at least 20), and each
//!   tick checked to run exactly once.
//!
//! Redis counts the commands a Lua script runs in `INFO commandstats` as
//! well as the `EVALSHA` itself; `cmds/op` includes them, `evalsha/op` does not.

mod args;
mod commandstats;
mod cpu;
mod measure;
mod peers;
mod probe;
mod report;
mod rounds;
mod scenarios;
mod targets;

use std::process::ExitCode;

use soloist_testkit::{RedisCluster, RedisServer};

use crate::args::{Args, Command, REDLOCK_NODES, USAGE};
use crate::probe::Probe;
use crate::report::Row;
use crate::scenarios::{Bench, Nodes, Scenario};

/// A cluster's seed URLs, and its primaries (URL and process id) when
/// lockbench started it; empty otherwise.
type ClusterSeeds = (Vec<String>, Vec<(String, Option<u32>)>);

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("lockbench: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Started outside the runtime (it blocks until the server answers) and
    // kept alive until the end: dropping it kills the server.
    let (server, url) = match &args.url {
        Some(url) => (None, url.clone()),
        None => {
            let server = RedisServer::start();
            let url = server.url();
            (Some(server), url)
        }
    };
    let redis_pid = server.as_ref().and_then(RedisServer::pid);
    // The Redlock nodes, likewise started here and kept alive to the end.
    let mut redlock_servers = Vec::new();
    let redlock_nodes: Vec<(String, Option<u32>)> = if !args.scenarios.contains(&Scenario::Redlock3)
    {
        Vec::new()
    } else if args.redlock_urls.is_empty() {
        redlock_servers = (0..REDLOCK_NODES).map(|_| RedisServer::start()).collect();
        redlock_servers
            .iter()
            .map(|server| (server.url(), server.pid()))
            .collect()
    } else {
        args.redlock_urls
            .iter()
            .map(|url| (url.clone(), None))
            .collect()
    };
    // The cluster, likewise; its primaries are known here only when started here.
    let mut cluster = None;
    let cluster_nodes: Option<ClusterSeeds> = if !args.scenarios.contains(&Scenario::Cluster) {
        None
    } else if args.cluster_urls.is_empty() {
        let started = RedisCluster::start();
        let primaries = started
            .primaries()
            .into_iter()
            .map(|server| (server.url(), server.pid()))
            .collect();
        let seeds = started.urls();
        cluster = Some(started);
        Some((seeds, primaries))
    } else {
        Some((args.cluster_urls.clone(), Vec::new()))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot build the tokio runtime");
    let rows = runtime.block_on(run(&args, url, redis_pid, &redlock_nodes, cluster_nodes));
    let checks = targets::evaluate(&rows);
    if args.json {
        for row in &rows {
            println!("{}", report::json_line(row));
        }
        if !checks.is_empty() {
            eprint!("\n{}", targets::table(&checks));
        }
    } else {
        print!("\n{}", report::table(&rows));
        if !checks.is_empty() {
            print!("\n{}", targets::table(&checks));
        }
    }
    drop(server);
    drop(redlock_servers);
    drop(cluster);
    ExitCode::SUCCESS
}

/// Runs the chosen scenarios against the server at `url`, for `redlock3`
/// the `redlock_nodes` (URL and process id when known), and for `cluster`
/// the cluster of `cluster_nodes` (its seed URLs, and its primaries when
/// known: empty, they are looked up).
async fn run(
    args: &Args,
    url: String,
    redis_pid: Option<u32>,
    redlock_nodes: &[(String, Option<u32>)],
    cluster_nodes: Option<ClusterSeeds>,
) -> Vec<Row> {
    let probe = Probe::connect(&url, redis_pid).await;
    eprintln!(
        "lockbench: redis {} at {url}; {} s warm-up + {} s measured per run",
        probe.redis_version().await,
        args.warmup.as_secs(),
        args.secs.as_secs()
    );
    let redlock = if redlock_nodes.is_empty() {
        None
    } else {
        let urls: Vec<String> = redlock_nodes.iter().map(|(url, _)| url.clone()).collect();
        eprintln!("lockbench: redlock3 nodes at {}", urls.join(", "));
        Some(Nodes {
            urls,
            probe: Probe::connect_all(redlock_nodes).await,
        })
    };
    let cluster = match cluster_nodes {
        Some((seeds, primaries)) => Some(scenarios::connect_cluster(seeds, primaries).await),
        None => None,
    };
    let bench = Bench {
        url,
        secs: args.secs,
        warmup: args.warmup,
        probe,
        libraries: args.libraries.clone(),
        redlock,
        cluster,
    };
    scenarios::run(&args.scenarios, &bench).await
}
