//! Where Redis is: the one description the lock client and the worker's
//! stream sources both take.

use std::fmt;

use crate::tls::{TlsOptions, redact};

/// Where Redis runs and how to reach it: one server, a primary that Redis
/// Sentinel manages, or a Redis Cluster, with the TLS settings for
/// `rediss://` URLs. [`ClientBuilder::open`](crate::ClientBuilder::open)
/// and the worker's `StreamSourceBuilder::open` take it, so locks and queues
/// are pointed at Redis the same way.
///
/// - [`server`](Self::server): one server; a failover behind its address (a
///   virtual IP, a DNS name, a proxy) is followed by reconnecting.
/// - [`sentinel`](Self::sentinel): the sentinels are asked for the primary
///   of a named master on connect, and again whenever a connection breaks
///   or the server it reaches answers as a replica (`READONLY`), so the
///   client follows the primary through failovers.
/// - [`cluster`](Self::cluster): any reachable node of the list tells the
///   slot map; each command goes to the primary of its key's hash slot, and
///   `MOVED` / `ASK` redirections (failover, resharding) are followed. Every
///   key one lock needs shares one hash slot; see the
///   [key layout](https://docs.rs/soloist/latest/soloist/#key-layout). While a slot migrates, Redis answers a
///   script whose keys are split between the two nodes, or not yet on
///   either, with `TRYAGAIN`: such requests (taking a lock nobody holds, in
///   that slot) are retried until the migration ends or the operation
///   timeout passes.
///
/// ```
/// use soloist::Deployment;
/// let one = Deployment::server("redis://127.0.0.1:6379");
/// let managed = Deployment::sentinel(
///     ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3:26379"],
///     "jobs",
/// )
/// .master_credentials(Some("soloist"), "secret");
/// let sharded = Deployment::cluster(["redis://10.0.1.1:6379", "redis://10.0.1.2:6379"]);
/// // Passwords never show in debug output or errors.
/// assert!(!format!("{managed:?}").contains("secret"));
/// # let _ = (one, sharded);
/// ```
#[derive(Clone)]
#[must_use]
pub struct Deployment {
    pub(crate) shape: Shape,
    pub(crate) tls: TlsOptions,
}

/// The kinds of deployment.
#[derive(Clone)]
pub(crate) enum Shape {
    Server(String),
    #[cfg(feature = "sentinel")]
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        /// Username (if any) and password of the primary, when it has them.
        master_auth: Option<(Option<String>, String)>,
        /// The database to select on the primary.
        master_db: i64,
    },
    #[cfg(feature = "cluster")]
    Cluster(Vec<String>),
}

impl Deployment {
    /// One Redis server at `url`: `redis://[user:pass@]host:port[/db]`, or
    /// `rediss://` for TLS with the `tls-rustls` feature.
    pub fn server(url: impl Into<String>) -> Self {
        Self::new(Shape::Server(url.into()))
    }

    /// The primary that the sentinels at `sentinel_urls`
    /// (`redis://host:26379`, with the sentinels' own credentials if they
    /// have them) report for the master named `master`. The primary's own
    /// credentials, if it needs them, are set with
    /// [`master_credentials`](Self::master_credentials); it is reached over
    /// TLS when the sentinel URLs are `rediss://`.
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub fn sentinel<I>(sentinel_urls: I, master: impl Into<String>) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Self::new(Shape::Sentinel {
            sentinels: urls(sentinel_urls),
            master: master.into(),
            master_auth: None,
            master_db: 0,
        })
    }

    /// A Redis Cluster reachable through any of `node_urls` (a few of its
    /// nodes are enough; the rest are learnt from the slot map). Cluster
    /// mode has one database: a `/db` in the URLs is refused.
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn cluster<I>(node_urls: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Self::new(Shape::Cluster(urls(node_urls)))
    }

    fn new(shape: Shape) -> Self {
        Deployment {
            shape,
            tls: TlsOptions::default(),
        }
    }

    /// For a [`sentinel`](Self::sentinel) deployment: the username (or
    /// `None` for the default user) and password of the primary and its
    /// replicas. Ignored for the other kinds, whose URLs carry credentials.
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub fn master_credentials(mut self, username: Option<&str>, password: &str) -> Self {
        if let Shape::Sentinel { master_auth, .. } = &mut self.shape {
            *master_auth = Some((username.map(str::to_owned), password.to_owned()));
        }
        self
    }

    /// For a [`sentinel`](Self::sentinel) deployment: the database to use
    /// on the primary (default 0). Ignored for the other kinds, whose URLs
    /// name it (a cluster has only database 0).
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub fn master_database(mut self, db: i64) -> Self {
        if let Shape::Sentinel { master_db, .. } = &mut self.shape {
            *master_db = db;
        }
        self
    }

    /// Trusts the CA certificates in `pem` (one or more PEM blocks) for
    /// `rediss://` servers, instead of the system's trust store: for a
    /// private CA. A server whose certificate does not chain to them is
    /// refused at connect with [`LockError::Connection`](crate::LockError::Connection).
    ///
    /// ```no_run
    /// use soloist::{Deployment, LockClient};
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let redis = Deployment::server("rediss://redis.internal:6380")
    ///     .tls_root_certificate(std::fs::read("/etc/redis/ca.pem")?);
    /// let locks = LockClient::builder().open(redis).await?;
    /// # let _ = locks; Ok(()) }
    /// ```
    #[cfg(feature = "tls-rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls-rustls")))]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls = self.tls.root_certificates(pem);
        self
    }

    /// Presents this client certificate chain and its private key (both
    /// PEM) to `rediss://` servers that require mutual TLS
    /// (`tls-auth-clients yes`).
    ///
    /// ```no_run
    /// use soloist::{Deployment, LockClient};
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let redis = Deployment::server("rediss://redis.internal:6380")
    ///     .tls_root_certificate(std::fs::read("ca.pem")?)
    ///     .tls_client_identity(std::fs::read("client.pem")?, std::fs::read("client.key")?);
    /// let locks = LockClient::builder().open(redis).await?;
    /// # let _ = locks; Ok(()) }
    /// ```
    #[cfg(feature = "tls-rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls-rustls")))]
    pub fn tls_client_identity(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls = self.tls.client_identity(certificate_pem, key_pem);
        self
    }

    /// Whether this is a Redis Cluster, where keys used together must share
    /// a hash slot.
    ///
    /// ```
    /// use soloist::Deployment;
    /// assert!(!Deployment::server("redis://10.0.1.1:6379").is_cluster());
    /// # #[cfg(feature = "cluster")]
    /// assert!(Deployment::cluster(["redis://10.0.1.1:6379"]).is_cluster());
    /// ```
    pub fn is_cluster(&self) -> bool {
        match self.shape {
            #[cfg(feature = "cluster")]
            Shape::Cluster(_) => true,
            _ => false,
        }
    }
}

#[cfg(any(feature = "sentinel", feature = "cluster"))]
fn urls<I>(urls: I) -> Vec<String>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    urls.into_iter()
        .map(|url| url.as_ref().to_owned())
        .collect()
}

/// A server URL: `"redis://127.0.0.1:6379".into()`.
impl<T: AsRef<str> + ?Sized> From<&T> for Deployment {
    fn from(url: &T) -> Self {
        Deployment::server(url.as_ref())
    }
}

impl From<String> for Deployment {
    fn from(url: String) -> Self {
        Deployment::server(url)
    }
}

impl fmt::Debug for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[cfg(any(feature = "sentinel", feature = "cluster"))]
        let redacted = |urls: &[String]| urls.iter().map(|url| redact(url)).collect::<Vec<_>>();
        let mut out = f.debug_struct("Deployment");
        match &self.shape {
            Shape::Server(url) => out.field("server", &redact(url)),
            #[cfg(feature = "sentinel")]
            Shape::Sentinel {
                sentinels,
                master,
                master_auth,
                master_db,
            } => out
                .field("sentinels", &redacted(sentinels))
                .field("master", master)
                .field(
                    "master_user",
                    &master_auth.as_ref().map(|(user, _)| user.as_deref()),
                )
                .field("master_db", master_db),
            #[cfg(feature = "cluster")]
            Shape::Cluster(nodes) => out.field("cluster", &redacted(nodes)),
        };
        out.field("tls", &self.tls).finish()
    }
}
