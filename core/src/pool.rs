//! The connection pool for the Redis backend.
//!
//! bb8 with a connection manager of our own rather than `bb8-redis`'s: that
//! one never reports a connection as broken, so a connection that died with
//! its server would stay in the pool unless every check-out paid a PING round
//! trip. Ours marks a connection broken when a command fails at the transport
//! level, and bb8 replaces it when it is returned; check-outs cost nothing.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};

#[derive(Debug)]
pub(crate) struct ConnectionManager {
    client: redis::Client,
    config: AsyncConnectionConfig,
}

/// A pooled connection and whether it failed at the transport level.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) conn: MultiplexedConnection,
    broken: bool,
}

impl Connection {
    /// Records the outcome of a command; a transport failure retires the connection.
    pub(crate) fn observe<T>(&mut self, result: &Result<T, RedisError>) {
        if let Err(err) = result {
            if is_transport_error(err) {
                self.broken = true;
            }
        }
    }
}

pub(crate) fn is_transport_error(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_unrecoverable_error()
}

impl ConnectionManager {
    pub(crate) fn new(client: redis::Client, op_timeout: Duration) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout));
        ConnectionManager { client, config }
    }
}

impl bb8::ManageConnection for ConnectionManager {
    type Connection = Connection;
    type Error = RedisError;

    async fn connect(&self) -> Result<Connection, RedisError> {
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(Connection {
            conn,
            broken: false,
        })
    }

    async fn is_valid(&self, conn: &mut Connection) -> Result<(), RedisError> {
        redis::cmd("PING").query_async(&mut conn.conn).await
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        conn.broken
    }
}
