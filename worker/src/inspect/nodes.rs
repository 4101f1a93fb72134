//! Commands that must reach every primary (`SCAN`), and pipelines sent to
//! the primary that answered the scan.

#[cfg(feature = "cluster")]
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{FromRedisValue, Pipeline, Value};
use soloist_core::Conn;

use crate::error::{Result, WorkerError};

/// How many keys one `SCAN` call looks at: enough to be quick, few enough
/// that no call holds the server for long.
pub(crate) const SCAN_COUNT: usize = 1000;

/// A primary: the server itself, or a cluster node by address.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) enum Node {
    Server,
    Cluster { host: String, port: u16 },
}

fn lock_err(err: redis::RedisError) -> WorkerError {
    WorkerError::Lock(err.into())
}

/// Every primary of the deployment `conn` reaches.
pub(crate) async fn primaries(conn: &mut Conn) -> Result<Vec<Node>> {
    if matches!(conn, Conn::Server(_)) {
        return Ok(vec![Node::Server]);
    }
    let slots: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(conn)
        .await
        .map_err(lock_err)?;
    let mut nodes = Vec::new();
    let Value::Array(ranges) = slots else {
        return Err(unexpected("CLUSTER SLOTS"));
    };
    for range in ranges {
        let Value::Array(parts) = range else {
            return Err(unexpected("CLUSTER SLOTS"));
        };
        // [start, end, [host, port, id, ...], replicas...]
        let Some(Value::Array(primary)) = parts.get(2) else {
            return Err(unexpected("CLUSTER SLOTS"));
        };
        let host = primary
            .first()
            .and_then(|v| String::from_redis_value(v.clone()).ok());
        let port = primary
            .get(1)
            .and_then(|v| u16::from_redis_value(v.clone()).ok());
        let (Some(host), Some(port)) = (host, port) else {
            return Err(unexpected("CLUSTER SLOTS"));
        };
        let node = Node::Cluster { host, port };
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    Ok(nodes)
}

fn unexpected(what: &str) -> WorkerError {
    WorkerError::Lock(soloist_core::LockError::InvalidArgument {
        name: "reply",
        reason: format!("unexpected reply to {what}"),
    })
}

/// One page of `SCAN` on `node`: the next cursor and the keys found.
pub(crate) async fn scan_page(
    conn: &mut Conn,
    node: &Node,
    cursor: u64,
    pattern: &str,
) -> Result<(u64, Vec<String>)> {
    let mut scan = redis::cmd("SCAN");
    scan.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_COUNT);
    let reply: Value = match (conn, node) {
        (conn @ Conn::Server(_), _) => scan.query_async(conn).await,
        #[cfg(feature = "cluster")]
        (Conn::Cluster(cluster), Node::Cluster { host, port }) => {
            cluster
                .route_command(
                    scan,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    }),
                )
                .await
        }
        #[cfg(feature = "cluster")]
        (Conn::Cluster(_), Node::Server) => return Err(unexpected("SCAN routing")),
        // soloist-core built with its `cluster` feature (by another crate of
        // the build) and this crate without: no node to route to.
        #[cfg(not(feature = "cluster"))]
        #[allow(unreachable_patterns)]
        _ => return Err(unexpected("SCAN routing")),
    }
    .map_err(lock_err)?;
    <(u64, Vec<String>)>::from_redis_value(reply).map_err(|err| lock_err(err.into()))
}

/// Runs `pipe` on `node`, whose keys must all live there.
pub(crate) async fn pipeline_on(
    conn: &mut Conn,
    node: &Node,
    pipe: Pipeline,
) -> Result<Vec<Value>> {
    let count = pipe.len();
    if count == 0 {
        return Ok(Vec::new());
    }
    match (conn, node) {
        (conn @ Conn::Server(_), _) => pipe.query_async(conn).await,
        #[cfg(feature = "cluster")]
        (Conn::Cluster(cluster), Node::Cluster { host, port }) => {
            cluster
                .route_pipeline(
                    pipe,
                    0,
                    count,
                    SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    },
                )
                .await
        }
        #[cfg(feature = "cluster")]
        (Conn::Cluster(_), Node::Server) => return Err(unexpected("pipeline routing")),
        #[cfg(not(feature = "cluster"))]
        #[allow(unreachable_patterns)]
        _ => return Err(unexpected("pipeline routing")),
    }
    .map_err(lock_err)
}

/// Every key matching a pattern on every primary, one page at a time.
///
/// A cursor rather than a callback: the futures of the inspector's methods
/// stay `Send`, so they can be awaited in spawned tasks and web handlers.
pub(crate) struct Scan {
    pattern: String,
    nodes: std::vec::IntoIter<Node>,
    /// The node being scanned and the cursor to continue from.
    at: Option<(Node, u64)>,
}

impl Scan {
    pub(crate) async fn new(conn: &mut Conn, pattern: &str) -> Result<Self> {
        Ok(Scan {
            pattern: pattern.to_owned(),
            nodes: primaries(conn).await?.into_iter(),
            at: None,
        })
    }

    /// The next non-empty page and the node it came from; `None` once
    /// every primary is scanned through.
    pub(crate) async fn next_page(
        &mut self,
        conn: &mut Conn,
    ) -> Result<Option<(Node, Vec<String>)>> {
        loop {
            let (node, cursor) = match self.at.take() {
                Some(at) => at,
                None => match self.nodes.next() {
                    Some(node) => (node, 0),
                    None => return Ok(None),
                },
            };
            let (next, keys) = scan_page(conn, &node, cursor, &self.pattern).await?;
            if next != 0 {
                self.at = Some((node.clone(), next));
            }
            if !keys.is_empty() {
                return Ok(Some((node, keys)));
            }
        }
    }
}
