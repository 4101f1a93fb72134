//! Turning a [`Deployment`] (URLs and TLS settings) into what connects to
//! it: the one place the lock client and the worker's stream sources open
//! Redis.

#[cfg(any(feature = "sentinel", feature = "cluster"))]
use std::sync::Arc;
#[cfg(feature = "cluster")]
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[cfg(feature = "cluster")]
use redis::cluster::{ClusterClient, ClusterClientBuilder};

use crate::deployment::{Deployment, Shape};
use crate::error::{LockError, Result};
#[cfg(feature = "sentinel")]
use crate::sentinel::Sentinels;

/// What a connection pool connects to, parsed and checked; nothing is sent
/// until the first connection.
#[derive(Debug, Clone)]
// Made once per client: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Target {
    Server(redis::Client),
    /// The primary the sentinels name, asked again for every new connection.
    #[cfg(feature = "sentinel")]
    Sentinel(Arc<Sentinels>),
    #[cfg(feature = "cluster")]
    Cluster {
        client: ClusterClient,
        /// One client per listed node, for the connections the cluster
        /// client does not make (the wake-up subscription), tried in turn.
        seeds: Arc<[redis::Client]>,
        next_seed: Arc<AtomicUsize>,
    },
}

impl Target {
    /// Parses and checks every URL of `deployment` and applies its TLS
    /// settings; every refusal is an [`LockError::InvalidArgument`].
    #[cfg_attr(not(feature = "cluster"), allow(unused_variables))]
    pub(crate) fn open(
        deployment: &Deployment,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Self> {
        match &deployment.shape {
            Shape::Server(url) => Ok(Target::Server(open_client(url, &deployment.tls)?)),
            #[cfg(feature = "sentinel")]
            Shape::Sentinel {
                sentinels,
                master,
                master_auth,
                master_db,
            } => {
                let mut resolver =
                    Sentinels::new(sentinels, master, &deployment.tls)?.master_db(*master_db);
                if let Some((username, password)) = master_auth {
                    resolver = resolver.master_auth(username.as_deref(), password);
                }
                Ok(Target::Sentinel(Arc::new(resolver)))
            }
            #[cfg(feature = "cluster")]
            Shape::Cluster(urls) if urls.is_empty() => Err(LockError::invalid(
                "cluster",
                "name at least one node of the cluster",
            )),
            #[cfg(feature = "cluster")]
            Shape::Cluster(urls) => {
                let seeds = urls
                    .iter()
                    .map(|url| {
                        let client = open_client(url, &deployment.tls)?;
                        if client.get_connection_info().redis_settings().db() != 0 {
                            return Err(LockError::invalid(
                                "cluster",
                                format!("`{}` names a database; a cluster has only 0", redact(url)),
                            ));
                        }
                        Ok(client)
                    })
                    .collect::<Result<Arc<[_]>>>()?;
                let builder = ClusterClientBuilder::new(
                    seeds.iter().map(|seed| seed.get_connection_info().clone()),
                )
                .connection_timeout(connect_timeout)
                // Also bounds a request as a whole, redirections and retries included.
                .response_timeout(response_timeout)
                // A slot in migration (TRYAGAIN) or a failover under way
                // (CLUSTERDOWN) is retried after a pause from 10 ms doubling
                // to 500 ms, not redis-rs' default of at least 1.28 s, so
                // that a retry fits inside a lease.
                .min_retry_wait(10)
                .max_retry_wait(500)
                .retry_wait_formula(10, 2);
                let client = cluster_tls(builder, &deployment.tls)
                    .build()
                    .map_err(|err| LockError::invalid("cluster", err.to_string()))?;
                Ok(Target::Cluster {
                    client,
                    seeds,
                    next_seed: Arc::default(),
                })
            }
        }
    }

    /// A client for one server to open a connection of our own to: the
    /// server, the primary the sentinels name now (each step of asking them
    /// bounded by the timeouts), or the next node of a cluster's list.
    #[cfg_attr(
        not(feature = "sentinel"),
        allow(unused_variables, clippy::unused_async)
    )]
    pub(crate) async fn server(
        &self,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<redis::Client> {
        match self {
            Target::Server(client) => Ok(client.clone()),
            #[cfg(feature = "sentinel")]
            Target::Sentinel(sentinels) => {
                sentinels.primary(connect_timeout, response_timeout).await
            }
            #[cfg(feature = "cluster")]
            Target::Cluster {
                seeds, next_seed, ..
            } => Ok(seeds[next_seed.fetch_add(1, Ordering::Relaxed) % seeds.len()].clone()),
        }
    }

    /// What this target reaches, for error messages: a server's
    /// `host:port`, the master a Sentinel deployment names, or a cluster's
    /// listed nodes; never credentials.
    pub(crate) fn name(&self) -> String {
        match self {
            Target::Server(client) => client.get_connection_info().addr().to_string(),
            #[cfg(feature = "sentinel")]
            Target::Sentinel(sentinels) => format!("the primary of `{}`", sentinels.master()),
            #[cfg(feature = "cluster")]
            Target::Cluster { seeds, .. } => {
                let nodes: Vec<String> = seeds
                    .iter()
                    .map(|seed| seed.get_connection_info().addr().to_string())
                    .collect();
                format!("the cluster at {}", nodes.join(", "))
            }
        }
    }

    /// The server a single-server target talks to, whatever the database or
    /// credentials; `None` for other kinds.
    #[cfg(feature = "redlock")]
    pub(crate) fn address(&self) -> Option<String> {
        match self {
            Target::Server(client) => Some(client.get_connection_info().addr().to_string()),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

#[cfg(all(feature = "cluster", feature = "tls-rustls"))]
fn cluster_tls(builder: ClusterClientBuilder, tls: &TlsOptions) -> ClusterClientBuilder {
    if tls.is_empty() {
        builder
    } else {
        builder.certs(tls_certificates(tls))
    }
}

#[cfg(all(feature = "cluster", not(feature = "tls-rustls")))]
fn cluster_tls(builder: ClusterClientBuilder, _tls: &TlsOptions) -> ClusterClientBuilder {
    builder
}

/// The TLS settings a builder collected: a private CA to trust and a client
/// identity for mutual TLS. Empty without the `tls-rustls` feature, where
/// only the check that refuses `rediss://` remains.
#[derive(Clone, Default)]
pub(crate) struct TlsOptions {
    #[cfg(feature = "tls-rustls")]
    root_certificates: Option<Vec<u8>>,
    #[cfg(feature = "tls-rustls")]
    client_identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material is never printed; only whether it is set.
        let mut out = f.debug_struct("TlsOptions");
        #[cfg(feature = "tls-rustls")]
        out.field("root_certificates", &self.root_certificates.is_some())
            .field("client_identity", &self.client_identity.is_some());
        out.finish()
    }
}

#[cfg(feature = "tls-rustls")]
impl TlsOptions {
    /// Trusts the CA certificates in `pem` instead of the system's roots.
    pub(crate) fn root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates = Some(pem.into());
        self
    }

    /// Presents this certificate chain and private key to the server.
    pub(crate) fn client_identity(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client_identity = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    fn is_empty(&self) -> bool {
        self.root_certificates.is_none() && self.client_identity.is_none()
    }
}

/// Whether `url` asks for TLS.
fn is_tls(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
}

/// Parses `url` and applies `tls`; nothing is sent yet. Every refusal is an
/// [`LockError::InvalidArgument`] naming the setting at fault.
#[cfg(not(feature = "tls-rustls"))]
pub(crate) fn open_client(url: &str, _tls: &TlsOptions) -> Result<redis::Client> {
    refuse_tls(url)?;
    redis::Client::open(url)
        .map_err(|err| LockError::invalid("url", format!("`{}`: {err}", redact(url))))
}

/// Without the `tls-rustls` feature, a `rediss://` URL is refused with the
/// way out rather than with redis-rs' "feature not enabled".
#[cfg_attr(feature = "tls-rustls", allow(dead_code))]
fn refuse_tls(url: &str) -> Result<()> {
    if is_tls(url) {
        return Err(LockError::invalid(
            "url",
            format!(
                "`{}` asks for TLS: enable soloist's `tls-rustls` feature",
                redact(url)
            ),
        ));
    }
    Ok(())
}

/// Parses `url` and applies `tls`; nothing is sent yet. Every refusal is an
/// [`LockError::InvalidArgument`] naming the setting at fault.
#[cfg(feature = "tls-rustls")]
pub(crate) fn open_client(url: &str, tls: &TlsOptions) -> Result<redis::Client> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let bad_url =
        |err: redis::RedisError| LockError::invalid("url", format!("`{}`: {err}", redact(url)));
    install_crypto_provider();
    if tls.is_empty() {
        return redis::Client::open(url).map_err(bad_url);
    }
    if !is_tls(url) {
        return Err(LockError::invalid(
            "url",
            format!(
                "`{}` is not a `rediss://` URL, but TLS certificates were given",
                redact(url)
            ),
        ));
    }
    let certificates = |name: &'static str, pem: &[u8]| -> Result<()> {
        let parsed = CertificateDer::pem_slice_iter(pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|err| LockError::invalid(name, format!("not a PEM certificate: {err}")))?;
        if parsed.is_empty() {
            return Err(LockError::invalid(name, "holds no PEM certificate"));
        }
        Ok(())
    };
    if let Some(pem) = &tls.root_certificates {
        certificates("tls_root_certificate", pem)?;
    }
    if let Some((cert, key)) = &tls.client_identity {
        certificates("tls_client_identity", cert)?;
        PrivateKeyDer::from_pem_slice(key).map_err(|err| {
            LockError::invalid(
                "tls_client_identity",
                format!("not a PEM private key: {err}"),
            )
        })?;
    }
    redis::Client::build_with_tls(url, tls_certificates(tls)).map_err(bad_url)
}

#[cfg(feature = "tls-rustls")]
fn tls_certificates(tls: &TlsOptions) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: tls
            .client_identity
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: tls.root_certificates.clone(),
    }
}

/// rustls needs a process-wide crypto provider. With only `ring` compiled in
/// it would pick it by itself, but an application that also compiles in
/// aws-lc-rs (through another dependency) would then panic at the first
/// handshake; installing `ring` when nothing is installed yet avoids that
/// and keeps a provider the application chose.
#[cfg(feature = "tls-rustls")]
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: a provider is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// `url` without its password, for error messages. The credentials end at
/// the last `@` (a password may hold `/`, `?` or `#` unencoded, in which
/// case the URL does not parse and this is all the message shows).
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("redis://soloist:secret@127.0.0.1:6379/0"),
            "redis://soloist:***@127.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://:secret@h"), "redis://:***@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("redis://u:pa/ss@h:1/2"), "redis://u:***@h:1/2");
        assert_eq!(redact("redis://u:p?#@h"), "redis://u:***@h");
        assert_eq!(redact("nonsense"), "nonsense");
    }

    #[test]
    fn without_the_feature_rediss_names_it() {
        match refuse_tls("rediss://user:pw@h:6380") {
            Err(LockError::InvalidArgument { name, reason }) => {
                assert_eq!(name, "url");
                assert!(reason.contains("`tls-rustls`"), "{reason}");
                assert!(!reason.contains("pw"), "{reason}");
            }
            other => panic!("expected InvalidArgument(url), got {other:?}"),
        }
        assert!(refuse_tls("redis://h:6379").is_ok());
    }

    #[test]
    fn tls_schemes() {
        assert!(is_tls("rediss://h:1"));
        assert!(is_tls("VALKEYS://h"));
        assert!(!is_tls("redis://h"));
        assert!(!is_tls("rediss"));
    }
}
