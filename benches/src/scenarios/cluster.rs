//! `cluster`: soloist on a Redis Cluster, beside soloist on the single
//! server, in the same run.
//!
//! Unless given `--cluster-url`, lockbench starts a cluster of three
//! primaries with a replica each on loopback (the testkit's
//! `RedisCluster`). Rows:
//! - the `uncontended` cycle with 64 workers on distinct keys, sharing one
//!   `LockClient::cluster` (`soloist`), and the same on one
//!   `LockClient::connect` to the main server (`soloist-1node`), in the same
//!   interleaved rounds, so that their ratio is measured at the same moments;
//! - the `watchdog` run on the cluster: 10,000 leases of 3 s held by one
//!   client, after `watchdog`'s own single-node run. On a cluster the
//!   watchdog renews each batch of due leases with one call per hash slot
//!   in it, so the calls per period follow the slots the leases fall into.
//!
//! Commands and Redis CPU of the cluster rows are summed over the
//! primaries. Replicas are not counted: they only apply what their primary
//! forwards, and counting both would count every write twice.

use std::collections::BTreeSet;

use redis::aio::MultiplexedConnection;
use soloist_core::{LockClient, hash_slot};

use super::uncontended::{soloist_cycles, soloist_unfenced_cycles};
use super::watchdog::{lease_keys, soloist_leases};
use super::{Bench, ClusterNodes, SINGLE_NODE, Scenario};
use crate::probe::Probe;
use crate::report::Row;
use crate::rounds::Contestant;

/// Workers of the lock-cycle rows, on as many distinct keys.
const TASKS: usize = 64;

/// The most leases the watchdog renews in one batch, before it splits the
/// batch by hash slot (`soloist_core`'s watchdog `BATCH`).
const WATCHDOG_BATCH: usize = 1000;

/// Soloist's 64-worker cycle on the cluster, then on the single server.
pub(super) async fn contestants(bench: &Bench) -> Vec<Contestant> {
    let Some(cluster) = &bench.cluster else {
        return Vec::new();
    };
    let mut contestants = Vec::new();
    if bench.wants("soloist") {
        let locks = LockClient::cluster(&cluster.seeds)
            .await
            .expect("soloist cannot connect to the Redis Cluster");
        contestants.push(
            soloist_cycles(Scenario::Cluster, "soloist", TASKS, locks)
                .observed_by(cluster.probe.clone()),
        );
    }
    if bench.wants("soloist-unfenced") {
        let locks = LockClient::cluster(&cluster.seeds)
            .await
            .expect("soloist cannot connect to the Redis Cluster");
        contestants.push(
            soloist_unfenced_cycles(Scenario::Cluster, "soloist-unfenced", TASKS, locks)
                .observed_by(cluster.probe.clone()),
        );
    }
    if bench.wants("soloist") || bench.wants(SINGLE_NODE) {
        let locks = LockClient::connect(&bench.url)
            .await
            .expect("soloist cannot connect to Redis");
        contestants.push(soloist_cycles(Scenario::Cluster, SINGLE_NODE, TASKS, locks));
    }
    contestants
}

/// The watchdog's 10,000 leases, held on the cluster.
pub(super) async fn leases(bench: &Bench) -> Vec<Row> {
    let mut rows = Vec::new();
    let Some(cluster) = &bench.cluster else {
        return rows;
    };
    if !bench.wants("soloist") {
        return rows;
    }
    let keys: Vec<String> = lease_keys(Scenario::Cluster, "soloist").collect();
    let slots = distinct_slots(&keys);
    eprintln!(
        "  {} leases in {slots} hash slots over {} primaries; {} (batch, slot) pairs if the \
         watchdog batched them in key order",
        keys.len(),
        cluster.primaries,
        batched_slots(&keys, WATCHDOG_BATCH)
    );
    let locks = LockClient::cluster(&cluster.seeds)
        .await
        .expect("soloist cannot connect to the Redis Cluster");
    let mut row = soloist_leases(bench, Scenario::Cluster, locks, &cluster.probe).await;
    row.slots = Some(slots);
    bench.done(row, &mut rows);
    rows
}

/// How many hash slots `keys` fall into: soloist keeps the lock on a key
/// in that key's slot (unless it has a `}` outside any hash tag, which none
/// of lockbench's keys has).
fn distinct_slots(keys: &[String]) -> usize {
    keys.iter()
        .map(|key| hash_slot(key))
        .collect::<BTreeSet<u16>>()
        .len()
}

/// How many script calls renewing `keys` takes when they are cut into
/// batches of `batch` in the order given and each batch is split by slot.
fn batched_slots(keys: &[String], batch: usize) -> usize {
    keys.chunks(batch.max(1)).map(distinct_slots).sum()
}

/// Connects the probe to the primaries. `primaries` are their URLs and
/// process ids when lockbench started the cluster; empty, they are read
/// from `CLUSTER NODES` on the first seed that answers (process ids then
/// unknown, so no Redis CPU).
pub(crate) async fn connect(
    seeds: Vec<String>,
    primaries: Vec<(String, Option<u32>)>,
) -> ClusterNodes {
    let primaries = if primaries.is_empty() {
        discover(&seeds).await
    } else {
        primaries
    };
    let urls: Vec<&str> = primaries.iter().map(|(url, _)| url.as_str()).collect();
    eprintln!(
        "lockbench: cluster primaries at {} (seeds: {})",
        urls.join(", "),
        seeds.join(", ")
    );
    ClusterNodes {
        primaries: primaries.len(),
        probe: Probe::connect_all(&primaries).await,
        seeds,
    }
}

/// The primaries of the cluster `seeds` belong to, by `CLUSTER NODES`.
async fn discover(seeds: &[String]) -> Vec<(String, Option<u32>)> {
    let mut failures = Vec::new();
    for seed in seeds {
        match cluster_nodes(seed).await {
            Ok(nodes) => {
                let primaries = primaries_in(&nodes, seed);
                assert!(
                    !primaries.is_empty(),
                    "CLUSTER NODES at {seed} lists no primary serving slots"
                );
                return primaries.into_iter().map(|url| (url, None)).collect();
            }
            Err(err) => failures.push(format!("{seed}: {err}")),
        }
    }
    panic!(
        "no cluster seed answered CLUSTER NODES: {}",
        failures.join("; ")
    );
}

/// `CLUSTER NODES` as the node at `url` sees the cluster.
async fn cluster_nodes(url: &str) -> redis::RedisResult<String> {
    let client = redis::Client::open(url)?;
    let mut conn: MultiplexedConnection = client.get_multiplexed_async_connection().await?;
    redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await
}

/// The URLs of the primaries that serve slots and are not failing, from the
/// text of a `CLUSTER NODES` reply: `seed` with its host and port replaced,
/// so that its scheme, credentials and options carry over. A node that does
/// not know its own address (an empty host) is reached at `seed`'s host.
fn primaries_in(cluster_nodes: &str, seed: &str) -> Vec<String> {
    cluster_nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (address, flags) = (fields.get(1)?, fields.get(2)?);
            let flags: Vec<&str> = flags.split(',').collect();
            let serving = flags.contains(&"master")
                && !flags
                    .iter()
                    .any(|flag| matches!(*flag, "fail" | "fail?" | "noaddr" | "handshake"))
                && fields.len() > 8;
            if !serving {
                return None;
            }
            // `ip:port@cport[,hostname]`; the ip may be IPv6, so the port
            // is after the last colon.
            let host_port = address.split(['@', ',']).next()?;
            let (host, port) = host_port.rsplit_once(':')?;
            let port: u16 = port.parse().ok()?;
            with_host_port(seed, host, port)
        })
        .collect()
}

/// `url` with its host and port replaced (its host kept when `host` is
/// empty); `None` when `url` has no `scheme://`.
fn with_host_port(url: &str, host: &str, port: u16) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, old_host_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => (format!("{userinfo}@"), host_port),
        None => (String::new(), authority),
    };
    let host = if host.is_empty() {
        match old_host_port.rsplit_once(':') {
            Some((old_host, old_port)) if old_port.parse::<u16>().is_ok() => old_host.to_owned(),
            _ => old_host_port.to_owned(),
        }
    } else if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Some(format!("{scheme}://{userinfo}{host}:{port}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 slave 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 1426238316232 5 connected
824fe116063bc5fcf9f4ffd895bc17aee7731ac3 127.0.0.1:30006@31006 slave 292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 0 1426238317741 6 connected
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 127.0.0.1:30007@31007 master,fail - 0 1426238316232 7 disconnected
bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb 127.0.0.1:30008@31008 master - 0 1426238316232 8 connected
";

    #[test]
    fn primaries_are_the_serving_masters_at_the_seed_scheme() {
        assert_eq!(
            primaries_in(NODES, "redis://user:pw@10.0.0.9:7000/0"),
            vec![
                "redis://user:pw@127.0.0.1:30002/0".to_owned(),
                "redis://user:pw@127.0.0.1:30003/0".to_owned(),
                "redis://user:pw@127.0.0.1:30001/0".to_owned(),
            ]
        );
    }

    #[test]
    fn addresses_without_a_host_or_with_ipv6_still_make_urls() {
        let nodes = "\
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca :6379@16379,node-a myself,master - 0 0 1 connected 0-16383
";
        assert_eq!(
            primaries_in(nodes, "rediss://cache.example:7000"),
            vec!["rediss://cache.example:6379".to_owned()]
        );
        assert_eq!(
            with_host_port("redis://127.0.0.1:7000?protocol=resp3", "::1", 7001),
            Some("redis://[::1]:7001?protocol=resp3".to_owned())
        );
        assert_eq!(with_host_port("not a url", "h", 1), None);
    }

    #[test]
    fn batches_split_by_slot_take_at_least_one_call_per_slot() {
        let keys: Vec<String> = ["a", "{a}:x", "b", "c", "{c}:y"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(distinct_slots(&keys), 3);
        // [a, {a}:x] [b, c] [{c}:y]: 1 + 2 + 1.
        assert_eq!(batched_slots(&keys, 2), 4);
        assert_eq!(batched_slots(&keys, 1000), 3);
    }
}
