//! The single-node Redis backend.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::backend::{
    Attempt, Backend, LeaseKind, Record, ReleasedWith, Renewal, Renewed, Waiting,
};
use crate::deployment::Deployment;
use crate::error::Result;
use crate::fence::{FencedValue, FencedWrite};
use crate::node::{RedisNode, RedisSettings};
use crate::notice::Listener;
use crate::pool::Conn;
use crate::pubsub::ReleaseNotices;
use crate::tls::Target;

#[derive(Debug)]
pub(crate) struct RedisBackend {
    node: Arc<RedisNode>,
    notices: Arc<ReleaseNotices>,
}

impl RedisBackend {
    /// Connects, and checks the server is reachable and safe to use.
    pub(crate) async fn connect(
        deployment: &Deployment,
        settings: &RedisSettings,
    ) -> Result<Arc<Self>> {
        let target = Target::open(deployment, settings.op_timeout, settings.op_timeout)?;
        let node = Arc::new(RedisNode::new(target, settings));
        node.check_server().await?;
        let notices = ReleaseNotices::new(vec![node.clone()], settings.op_timeout);
        Ok(Arc::new(RedisBackend { node, notices }))
    }
}

impl Backend for RedisBackend {
    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
        counter: &'a str,
        token: &'a str,
        ttl: Duration,
        waiting: Option<Waiting>,
    ) -> BoxFuture<'a, Result<Attempt>> {
        self.node
            .try_acquire(key, counter, token, ttl, waiting)
            .boxed()
    }

    fn try_acquire_unfenced<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
        waiting: Option<Waiting>,
    ) -> BoxFuture<'a, Result<Attempt>> {
        self.node
            .try_acquire_unfenced(key, token, ttl, waiting)
            .boxed()
    }

    fn try_acquire_permit<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        permits: u32,
        ttl: Duration,
        waiting: Option<Waiting>,
    ) -> BoxFuture<'a, Result<Attempt>> {
        self.node
            .try_acquire_permit(name, token, permits, ttl, waiting)
            .boxed()
    }

    fn release_permit<'a>(&'a self, name: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>> {
        self.node.release_permit(name, token).boxed()
    }

    fn try_acquire_rw<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        request: &'a str,
        write: bool,
        ttl: Duration,
        waiting: Option<Waiting>,
    ) -> BoxFuture<'a, Result<Attempt>> {
        self.node
            .try_acquire_rw(name, token, request, write, ttl, waiting)
            .boxed()
    }

    fn release_rw<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        write: bool,
    ) -> BoxFuture<'a, Result<bool>> {
        self.node.release_rw(name, token, write).boxed()
    }

    fn admit<'a>(
        &'a self,
        name: &'a str,
        interval: Duration,
    ) -> BoxFuture<'a, Result<Option<Duration>>> {
        self.node.admit(name, interval).boxed()
    }

    fn extend<'a>(&'a self, leases: &'a [Renewal<'a>]) -> BoxFuture<'a, Result<Vec<Renewed>>> {
        async move {
            let renewed = self.node.extend(leases).await?;
            Ok(renewed.into_iter().map(Ok).collect())
        }
        .boxed()
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>> {
        self.node.release(key, token).boxed()
    }

    fn release_with<'a>(
        &'a self,
        kind: LeaseKind,
        key: &'a str,
        token: &'a str,
        along: &'a [Vec<Vec<u8>>],
    ) -> Option<BoxFuture<'a, Result<ReleasedWith>>> {
        Some(self.node.release_with(kind, key, token, along).boxed())
    }

    fn batch_node(&self) -> Option<&RedisNode> {
        self.node.batches().then_some(&*self.node)
    }

    fn listen(&self, key: &str) -> Listener {
        self.notices.listen(key)
    }

    fn subscribe<'a>(&'a self, listener: &'a mut Listener) -> BoxFuture<'a, ()> {
        self.notices.subscribe(listener).boxed()
    }

    fn fenced_set<'a>(
        &'a self,
        resource: &'a str,
        fence: u64,
        record: Record<'a>,
    ) -> BoxFuture<'a, Result<FencedWrite>> {
        self.node.fenced_set(resource, fence, record).boxed()
    }

    fn server_time(&self) -> BoxFuture<'_, Result<Option<SystemTime>>> {
        async move { Ok(Some(self.node.server_time().await?)) }.boxed()
    }

    fn renewal_group(&self, key: &str) -> u16 {
        self.node.renewal_group(key)
    }

    fn fenced_get<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<Option<FencedValue>>> {
        self.node.fenced_get(resource).boxed()
    }

    fn connection(&self) -> BoxFuture<'_, Result<Option<Conn>>> {
        async move { Ok(Some(self.node.connection().await?)) }.boxed()
    }

    fn key_prefix(&self) -> Option<&str> {
        Some(self.node.prefix())
    }
}
