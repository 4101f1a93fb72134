//! A private CA with a server and a client certificate, made at test time.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A fresh private CA, a server certificate for `127.0.0.1` / `localhost` and a client
/// certificate, both signed by the CA; everything PEM. Each call makes new keys, so two
/// `TestCertificates` do not trust each other.
///
/// ```
/// use soloist_testkit::TestCertificates;
///
/// let certs = TestCertificates::generate();
/// assert!(certs.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
/// assert_ne!(certs.ca_pem(), TestCertificates::generate().ca_pem());
/// ```
#[derive(Clone)]
pub struct TestCertificates {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl std::fmt::Debug for TestCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCertificates").finish_non_exhaustive()
    }
}

impl TestCertificates {
    /// Generates a CA and the two certificates it signs.
    ///
    /// # Panics
    ///
    /// If key generation or signing fails (test setup).
    pub fn generate() -> TestCertificates {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "soloist test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("self-sign the test CA");

        let leaf = |names: Vec<String>, common_name: &str, usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(names).expect("certificate params");
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("certificate key");
            let cert = params
                .signed_by(&key, &ca)
                .expect("sign a test certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            "soloist test server",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            vec!["soloist-client".to_owned()],
            "soloist test client",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        TestCertificates {
            ca: ca.pem(),
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    /// The CA certificate, to trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca
    }

    /// The server's certificate (for `127.0.0.1` and `localhost`).
    pub fn server_cert_pem(&self) -> &str {
        &self.server_cert
    }

    /// The server's private key.
    pub fn server_key_pem(&self) -> &str {
        &self.server_key
    }

    /// A client certificate signed by the CA, for mutual TLS.
    pub fn client_cert_pem(&self) -> &str {
        &self.client_cert
    }

    /// The client certificate's private key.
    pub fn client_key_pem(&self) -> &str {
        &self.client_key
    }
}
