//! Real `redis-server` processes, a fault-injecting TCP proxy and child test processes for
//! soloist's tests.
//!
//! Soloist's guarantees are about what happens when things go wrong: a server dies, stops
//! answering, or a lock holder is frozen while its lease runs out. Mocks cannot tell us whether
//! that works, so every behaviour test runs against a **real** `redis-server` that this crate
//! starts on a free loopback port, in its own temporary directory, and kills on `Drop`
//! (the approach of redis-rs's `redis-test`).
//!
//! - [`RedisServer`] owns one server process. [`RedisServer::kill`] sends `SIGKILL` (a crash, no
//!   clean shutdown), [`RedisServer::pause`] / [`RedisServer::resume`] send `SIGSTOP` / `SIGCONT`
//!   (a server that accepts connections but never answers, like a long GC pause or a frozen VM),
//!   and [`RedisServer::restart`] brings it back, empty, on the same port so clients can
//!   reconnect to the same URL.
//! - [`Proxy`] sits between a client and a server and can [`cut`](Proxy::cut) every connection
//!   or [`stall`](Proxy::stall) the traffic without touching the server (a network partition).
//! - [`ReplicaSet`] is a primary and a replica synchronised with it, for tests of replica
//!   acknowledgement; pause or kill its replica to leave writes unacknowledged.
//! - [`RedisCluster`] is a Redis Cluster of three primaries with one replica each, six servers
//!   joined with `redis-cli --cluster create`, plain or TLS. It computes slots
//!   ([`RedisCluster::slot_of`]), kills the primary of a slot and waits for its replica to take
//!   over ([`RedisCluster::kill_primary_of`]), and moves slots with their keys while clients
//!   write ([`RedisCluster::migrate_slot`], step by step with
//!   [`RedisCluster::begin_migration`], or `redis-cli --cluster reshard` with
//!   [`RedisCluster::reshard`]).
//! - [`SentinelGroup`] is a primary, a replica and three Redis Sentinels monitoring them, for
//!   tests of clients that find the primary through the sentinels:
//!   [`kill_primary_and_wait_failover`](SentinelGroup::kill_primary_and_wait_failover) makes
//!   them promote the replica, and a [`Sentinel`] can be paused or killed on its own.
//! - [`ChildProcess`] re-runs the current test binary to execute one test function as a
//!   separate process, so a test can kill or freeze a lock holder that is a real other process.
//!
//! `redis-server` is looked up through the `REDIS_SERVER_BIN` environment variable, then on
//! `PATH`. When it cannot be found the test **fails** with a message saying how to install it;
//! it never passes by skipping. Every other setup failure panics with a message too: panicking
//! is how a test helper reports.
//!
//! # Example
//!
//! ```no_run
//! use soloist_testkit::RedisServer;
//!
//! let mut server = RedisServer::builder()
//!     .arg("--maxmemory-policy")
//!     .arg("allkeys-lru")
//!     .start();
//! assert_eq!(server.cli(&["PING"]), "PONG");
//! let url = server.url(); // hand this to the client under test
//!
//! server.pause(); // the server stops answering, connections stay open
//! server.resume();
//! server.kill(); // crash: connections are refused
//! server.start_again(); // same port, empty data set
//! # let _ = url;
//! ```
//!
//! The servers run without persistence (`--save "" --appendonly no`), so a restarted server has
//! lost every key: exactly the failure Redlock has to survive.

mod certs;
mod child;
mod cluster;
mod proxy;
mod replicas;
mod resp;
mod sentinel;
mod server;
mod signal;

pub use certs::TestCertificates;
pub use child::{ChildProcess, child_role, read_from_parent, send_to_parent};
pub use cluster::{Failover, RedisCluster, RedisClusterBuilder, SlotMigration};
pub use proxy::Proxy;
pub use replicas::ReplicaSet;
pub use sentinel::{Sentinel, SentinelGroup};
pub use server::{RedisServer, RedisServerBuilder, SOLOIST_ACL_RULES};
