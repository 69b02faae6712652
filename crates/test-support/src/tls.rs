//! TLS for tests: a certificate authority of the test's own with a server certificate for 127.0.0.1, and a TLS
//! terminator that serves that certificate in front of a plaintext server on loopback.
//!
//! The terminator exists because the local broker cannot serve TLS itself: tansu 0.6 declares `--cert` and
//! `--key` in one clap group, so giving both is rejected ("the argument '--cert <CERT>' cannot be used with
//! '--key <KEY>'") and either alone leaves the listener in plaintext. The client side under test — librdkafka's
//! `security.protocol=ssl` with `ssl.ca.location` — is the same whichever process ends the TLS session.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::fakes::TempDir;

/// A test CA, a server certificate it signed for `127.0.0.1` and `localhost`, and a second CA that signed
/// nothing here. The CAs are written as PEM files (what `KAFKA_SSL_CA_LOCATION` points at), removed when
/// dropped.
pub struct TestPki {
    /// PEM of the CA that signed the server certificate: trusting it, a client accepts the server.
    pub ca_file: PathBuf,
    /// PEM of an unrelated CA: trusting only it, a client must refuse the server.
    pub unrelated_ca_file: PathBuf,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivatePkcs8KeyDer<'static>,
    _dir: TempDir,
}

impl TestPki {
    /// Generates both CAs and the server certificate (ECDSA P-256).
    pub fn generate() -> Self {
        let dir = TempDir::new();
        let (ca_pem, issuer) = certificate_authority("rust-app test CA");
        let (unrelated_pem, _) = certificate_authority("rust-app unrelated test CA");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("server names");
        params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("server key");
        let server = params.signed_by(&key, &issuer).expect("server certificate signed by the test CA");
        let ca_file = dir.0.join("ca.pem");
        let unrelated_ca_file = dir.0.join("unrelated-ca.pem");
        std::fs::write(&ca_file, ca_pem).expect("write ca.pem");
        std::fs::write(&unrelated_ca_file, unrelated_pem).expect("write unrelated-ca.pem");
        TestPki {
            ca_file,
            unrelated_ca_file,
            server_chain: vec![server.der().clone()],
            server_key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            _dir: dir,
        }
    }

    /// A rustls server configuration presenting the server certificate (ring, the tree's crypto provider).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), PrivateKeyDer::Pkcs8(self.server_key.clone_key()))
            .expect("server certificate and key match");
        Arc::new(config)
    }
}

/// A self-signed CA named `name`: its PEM and the issuer that signs with it.
fn certificate_authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().expect("CA key");
    let certificate = params.self_signed(&key).expect("self-signed CA");
    (pem_certificate(certificate.der()), Issuer::new(params, key))
}

/// `der` as a PEM certificate block (what `KAFKA_SSL_CA_LOCATION` reads): base64 in lines of 64.
fn pem_certificate(der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Accepts TLS on `127.0.0.1:port` and forwards each connection's plaintext to `127.0.0.1:upstream`; stops
/// accepting and closes every connection when dropped.
pub struct TlsTerminator {
    /// The loopback port clients connect to with TLS.
    pub port: u16,
    accepting: JoinHandle<()>,
}

impl TlsTerminator {
    /// Listens on `port` (bound before this returns) with `pki`'s server certificate.
    pub async fn start(port: u16, upstream: u16, pki: &TestPki) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind the TLS port");
        let acceptor = TlsAcceptor::from(pki.server_config());
        let accepting = tokio::spawn(async move {
            // Dropped with this task: aborting it closes every forwarded connection too.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(forward(acceptor.clone(), client, upstream));
                while connections.try_join_next().is_some() {}
            }
        });
        TlsTerminator { port, accepting }
    }
}

/// Ends TLS from `client` and copies bytes both ways to the upstream until either side closes. A client that
/// refuses the certificate ends the handshake: nothing to forward then.
async fn forward(acceptor: TlsAcceptor, client: TcpStream, upstream: u16) {
    let Ok(mut tls) = acceptor.accept(client).await else { return };
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}
