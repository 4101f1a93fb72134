//! Turning a URL and the TLS settings of a builder into a `redis::Client`:
//! the one place the lock client and the worker's stream sources open Redis.

use crate::error::{LockError, Result};

/// The TLS settings a builder collected: a private CA to trust and a client
/// identity for mutual TLS. Empty without the `tls-rustls` feature, where
/// only the check that refuses `rediss://` remains.
#[doc(hidden)]
#[derive(Clone, Default)]
pub struct TlsOptions {
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
    pub fn root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates = Some(pem.into());
        self
    }

    /// Presents this certificate chain and private key to the server.
    pub fn client_identity(
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
    let certs = redis::TlsCertificates {
        client_tls: tls
            .client_identity
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: tls.root_certificates.clone(),
    };
    redis::Client::build_with_tls(url, certs).map_err(bad_url)
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

/// `url` without its password, for error messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{tail}")
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
