//! Mutual TLS between ambassadors, with no CA server.
//!
//! Every holder of the cluster key derives the same CA: its Ed25519 key
//! comes from the key through HKDF, and its certificate has fixed fields, so
//! the CA certificate is byte for byte the same on every node (Ed25519
//! signatures are deterministic). Each node then issues itself a short-lived
//! certificate with a fresh key at start-up and renews it well before it
//! expires. Both ends of every connection present a certificate and check
//! the other's chain to that CA: membership is holding the key.
//!
//! Peers are found by mDNS and dialed by address, so there is no host name
//! a certificate could be checked against; what a certificate proves is
//! membership. Node certificates of the derived CA all carry one fixed name,
//! [`MEMBER_NAME`], which consumers check with rustls's own verifier. For an
//! existing PKI given with `--tls-cert`, `--tls-key` and `--tls-ca`, whose
//! certificates name hosts, the check is the chain alone (as for client
//! certificates): any certificate of that CA is a member.
//!
//! TLS 1.3 only: both ends are mesh-amb, so nothing older is needed.
//!
//! After the handshake, a provider's terminator dials its local service and
//! sends one byte, [`READY`], once that service accepted; the consumer
//! forwards nothing before it. Without it, a consumer would take a
//! terminator whose service just died for a working backend, and its
//! client would get a closed connection instead of the next candidate.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tracing::{info, trace, warn};

use super::key::{ClusterKey, Purpose};
use crate::files;
use crate::secret;

/// Longest a TLS handshake may take, on either side. A handshake between
/// two hosts of one LAN takes milliseconds; this bounds what a stalled or
/// silent peer costs: one connection slot for a few seconds.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// The name every node certificate of the derived CA carries, and that
/// consumers check. `.invalid` (RFC 6761) can never be a real host.
pub const MEMBER_NAME: &str = "member.mesh-amb.invalid";
/// How often the renewal task looks at the wall clock: a suspended host
/// wakes up to an old certificate, and renews it within this.
const RENEW_CHECK: Duration = Duration::from_secs(60);
/// What a terminator sends once its local service accepted the connection.
pub const READY: u8 = 1;
/// A node certificate lives a day: short enough that a copied certificate
/// soon stops working, long enough that a node whose renewals fail for
/// hours (a suspended laptop) keeps its connections.
pub const NODE_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Renewed every third of its life, so two renewals can fail in a row.
pub const RENEW_EVERY: Duration = Duration::from_secs(8 * 3600);
/// A certificate is valid from an hour before its issue, so a peer whose
/// clock runs somewhat behind still accepts it.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410): this prefix, then the
/// 32 seed bytes.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The CA every holder of the cluster key derives.
pub struct ClusterCa {
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl ClusterCa {
    /// The same CA, byte for byte, from the same key.
    pub fn derive(key: &ClusterKey) -> anyhow::Result<ClusterCa> {
        let seed = key.derive(Purpose::ClusterCa);
        let mut pkcs8 = zeroize::Zeroizing::new(ED25519_PKCS8_PREFIX.to_vec());
        pkcs8.extend_from_slice(&seed[..]);
        let der = PrivatePkcs8KeyDer::from(pkcs8.as_slice());
        let ca_key = KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
            .context("cannot make the cluster CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            // No fingerprint here: any stranger that starts a handshake
            // sees this name, which must not identify the cluster.
            "mesh-amb cluster CA",
        );
        params.serial_number = Some(SerialNumber::from(vec![1]));
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(9999, 12, 31);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params
            .self_signed(&ca_key)
            .context("cannot make the cluster CA certificate")?;
        Ok(ClusterCa { key: ca_key, cert })
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        self.cert.der()
    }

    /// A certificate for this node, with a fresh key, valid from
    /// [`BACKDATE`] before `now` for [`NODE_CERT_LIFETIME`].
    pub fn issue(&self, node_id: &str, now: SystemTime) -> anyhow::Result<Identity> {
        let node_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("cannot make a node key")?;
        let mut params = CertificateParams::new(vec![MEMBER_NAME.to_owned()])
            .context("cannot make a node certificate")?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("mesh-amb node {node_id}"));
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + NODE_CERT_LIFETIME).into();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&node_key, &self.cert, &self.key)
            .context("cannot sign the node certificate")?;
        Ok(Identity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(node_key.serialize_der().into()),
        })
    }
}

/// A certificate chain and its private key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// `--tls-cert`, `--tls-key`, `--tls-ca`: this node's certificate chain, its
/// private key and the CA certificates peers must chain to (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: std::path::PathBuf,
}

impl PkiFiles {
    /// Whether the files make a TLS identity (readable PEM, a key that
    /// matches the certificate, an owner-only key file), so that a front
    /// end can refuse them before anything starts.
    pub fn check(&self) -> anyhow::Result<()> {
        let (roots, identity) = load_pki(self)?;
        configs(&roots, identity, false).map(drop)
    }
}

/// Where certificates come from.
enum Source {
    /// Derived from the cluster key; node certificates are renewed.
    Cluster {
        ca: Box<ClusterCa>,
        node_id: String,
        /// When the first certificate was issued.
        issued: SystemTime,
    },
    /// Files of an existing PKI, used as they are.
    Pki,
}

/// This node's TLS: what it accepts and presents, on both sides.
pub struct Tls {
    configs: ArcSwap<Configs>,
    source: Source,
}

struct Configs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// The name a backend's certificate is checked for: [`MEMBER_NAME`],
    /// or none (the address, ignored) for an existing PKI.
    member_name: Option<ServerName<'static>>,
}

impl Tls {
    /// `None` when TLS is off (no cluster key, no PKI files). An existing
    /// PKI takes precedence over the derived CA.
    pub fn new(
        cluster_key: Option<&ClusterKey>,
        pki: Option<&PkiFiles>,
        node_id: &str,
    ) -> anyhow::Result<Option<Arc<Tls>>> {
        let (source, roots, identity) = match (pki, cluster_key) {
            (Some(files), _) => {
                let (roots, identity) = load_pki(files)?;
                (Source::Pki, roots, identity)
            }
            (None, Some(key)) => {
                let ca = ClusterCa::derive(key)?;
                let issued = SystemTime::now();
                let identity = ca.issue(node_id, issued)?;
                let roots = vec![ca.cert_der().clone()];
                let source = Source::Cluster {
                    ca: Box::new(ca),
                    node_id: node_id.to_owned(),
                    issued,
                };
                (source, roots, identity)
            }
            (None, None) => return Ok(None),
        };
        let names = matches!(source, Source::Cluster { .. });
        let configs = configs(&roots, identity, names)?;
        Ok(Some(Arc::new(Tls {
            configs: ArcSwap::from_pointee(configs),
            source,
        })))
    }

    /// The terminator's side of the handshake: requires a member's client
    /// certificate. Send [`READY`] ([`ready`]) once the local service
    /// accepted.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<server::TlsStream<TcpStream>> {
        TlsAcceptor::from(self.configs.load().server.clone())
            .accept(stream)
            .await
    }

    /// The consumer's side: checks the backend is a member, presents our
    /// certificate, and waits for the terminator's [`READY`]. Callers bound
    /// it with [`HANDSHAKE_TIMEOUT`].
    pub async fn connect(&self, stream: TcpStream) -> io::Result<client::TlsStream<TcpStream>> {
        let configs = self.configs.load();
        let name = match &configs.member_name {
            Some(name) => name.clone(),
            None => ServerName::IpAddress(stream.peer_addr()?.ip().into()),
        };
        let connector = TlsConnector::from(configs.client.clone());
        let mut s = connector
            .connect(name, stream)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
        match s.read_u8().await {
            Ok(READY) => Ok(s),
            Ok(other) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the terminator sent {other:#04x}, not its ready byte"),
            )),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the provider's local service did not answer",
            )),
            Err(e) => Err(e),
        }
    }

    /// Issues a new node certificate once [`RENEW_EVERY`] has passed on the
    /// wall clock, until `stop`; new connections use it, open ones keep
    /// theirs. The wall clock, not a timer: a timer stops while the host
    /// is suspended, the certificate's validity does not. Returns at once
    /// for an existing PKI, whose files are the operator's to renew.
    pub async fn renew(self: Arc<Self>, stop: CancellationToken) {
        let Source::Cluster {
            ca,
            node_id,
            issued,
        } = &self.source
        else {
            return;
        };
        let mut issued = *issued;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RENEW_CHECK) => {}
            }
            let now = SystemTime::now();
            if !renewal_due(issued, now) {
                continue;
            }
            let roots = vec![ca.cert_der().clone()];
            match ca
                .issue(node_id, now)
                .and_then(|id| configs(&roots, id, true))
            {
                Ok(c) => {
                    self.configs.store(Arc::new(c));
                    issued = now;
                    info!("node certificate renewed");
                }
                // The current one is still valid for two more periods.
                Err(e) => warn!("cannot renew the node certificate: {e:#}"),
            }
        }
    }
}

/// Whether a certificate issued at `issued` is due for renewal at `now`;
/// a clock stepped back past the issue renews too.
fn renewal_due(issued: SystemTime, now: SystemTime) -> bool {
    now.duration_since(issued)
        .map_or(true, |age| age >= RENEW_EVERY)
}

/// Tells a consumer that the local service accepted: it may forward now.
pub async fn ready(stream: &mut server::TlsStream<TcpStream>) -> io::Result<()> {
    stream.write_all(&[READY]).await?;
    stream.flush().await
}

/// The server and client configurations for one identity; `names`: check
/// backends for [`MEMBER_NAME`] (derived CA), or their chain only.
fn configs(
    roots: &[CertificateDer<'static>],
    identity: Identity,
    names: bool,
) -> anyhow::Result<Configs> {
    let provider = default_provider();
    let mut store = RootCertStore::empty();
    for r in roots {
        store
            .add(r.clone())
            .context("a CA certificate cannot be used as a trust anchor")?;
    }
    let store = Arc::new(store);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(store.clone(), provider.clone())
            .build()
            .context("cannot build the client certificate check")?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(own_certificate)?;
    let server_verifier = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
        .build()
        .context("cannot build the server certificate check")?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?;
    let (client, member_name) = if names {
        let name = ServerName::try_from(MEMBER_NAME).expect("a valid DNS name");
        (client.with_webpki_verifier(server_verifier), Some(name))
    } else {
        let chain_only = Arc::new(MemberVerifier(server_verifier));
        (
            client
                .dangerous()
                .with_custom_certificate_verifier(chain_only),
            None,
        )
    };
    let client = client
        .with_client_auth_cert(identity.chain, identity.key)
        .map_err(own_certificate)?;
    Ok(Configs {
        server: Arc::new(server),
        client: Arc::new(client),
        member_name,
    })
}

/// Why the node's own certificate cannot serve with its key, said for
/// what it is: one that cannot be parsed is no key mismatch. The commonest
/// is an X.509 v1 certificate, which `openssl x509 -req` makes when given
/// no v3 extensions; webpki's error for it is only reachable through its
/// `Debug`.
fn own_certificate(e: rustls::Error) -> anyhow::Error {
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            anyhow::anyhow!("the node certificate does not match its key")
        }
        rustls::Error::InvalidCertificate(why) if format!("{why:?}").contains("CertVersion") => {
            anyhow::anyhow!(
                "the node certificate is X.509 v1 or v2, and TLS needs v3 \
                 (give openssl x509 -req an -extfile of v3 extensions)"
            )
        }
        other => anyhow::anyhow!("the node certificate cannot be used with its key: {other}"),
    }
}

/// Largest certificate file read (`--tls-ca`, `--tls-cert`): a system's
/// whole CA bundle is a fifth of it.
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// Reads an existing PKI's files: CA certificates, our chain, our key (the
/// key file must be readable by its owner only).
fn load_pki(files: &PkiFiles) -> anyhow::Result<(Vec<CertificateDer<'static>>, Identity)> {
    let certs =
        |path: &std::path::Path, what: &str| -> anyhow::Result<Vec<CertificateDer<'static>>> {
            let pem = files::read(path, MAX_PEM_FILE).with_context(|| format!("--tls-{what}"))?;
            let found = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| {
                    format!(
                        "--tls-{what} {}: not readable PEM certificates",
                        path.display()
                    )
                })?;
            anyhow::ensure!(
                !found.is_empty(),
                "--tls-{what} {}: no certificate in it",
                path.display()
            );
            Ok(found)
        };
    let roots = certs(&files.ca, "ca")?;
    let chain = certs(&files.cert, "cert")?;
    let pem =
        secret::read_secret_file(&files.key).map_err(|e| anyhow::anyhow!("--tls-key: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(pem.expose()).map_err(|_| {
        anyhow::anyhow!(
            "--tls-key {}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)",
            files.key.display()
        )
    })?;
    Ok((roots, Identity { chain, key }))
}

/// Checks a backend's chain to an existing PKI's CA and nothing else:
/// peers are dialed by the address mDNS gave, which the PKI's certificates
/// need not name (see the module documentation).
#[derive(Debug)]
struct MemberVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for MemberVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // The name is checked last, after the chain: this error means
            // the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {
                trace!(server = ?server_name, "member certificate accepted without a name check");
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The crypto provider of every config of ours: ring, chosen explicitly
/// rather than through rustls's process-wide default.
fn default_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::key::KEY_LEN;

    /// A self-signed X.509 v1 certificate (`openssl x509 -req -signkey`
    /// with no extensions), of a key not kept.
    const V1_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBFzCBvQIUSWPI03PgCh05oYVelKaX+LtXlAcwCgYIKoZIzj0EAwIwDTELMAkG
A1UEAwwCdjEwIBcNMjYxMjA2MTgxMjQ5WhgPMjEyNjExMTIxODEyNDlaMA0xCzAJ
BgNVBAMMAnYxMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEnIXXA4bJ9kWiyOVF
bfXvvjOyHruBdOG4ok573M6WhD1gP5Y8DdrmryxCX6KpaUnhr8vgxEskq1HWG3hf
y+WkJzAKBggqhkjOPQQDAgNJADBGAiEAt1KjDb+ZnAzbtuaCbMI/KEFIYbI9Zpvz
Q672KjCUrYgCIQD5KJJLc04l8t9n8anXc/OfiBsoU+w8MlksyVBwHAGj7g==
-----END CERTIFICATE-----
";

    #[test]
    fn a_node_certificate_that_cannot_serve_is_named_for_what_it_lacks() {
        let key = || {
            let pair = rcgen::KeyPair::generate().unwrap();
            PrivateKeyDer::Pkcs8(pair.serialize_der().into())
        };
        let ca = ClusterCa::derive(&ClusterKey::from_bytes([1; KEY_LEN])).unwrap();
        let roots = [ca.cert_der().clone()];
        let v1 = CertificateDer::from_pem_slice(V1_CERT.as_bytes()).unwrap();
        let identity = Identity {
            chain: vec![v1],
            key: key(),
        };
        let e = configs(&roots, identity, false).err().unwrap();
        assert!(format!("{e:#}").contains("is X.509 v1 or v2"), "{e:#}");

        // A certificate of another key.
        let pair = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example".into()])
            .unwrap()
            .self_signed(&pair)
            .unwrap();
        let identity = Identity {
            chain: vec![cert.der().clone()],
            key: key(),
        };
        let e = configs(&roots, identity, false).err().unwrap();
        assert!(format!("{e:#}").contains("does not match its key"), "{e:#}");
    }

    #[test]
    fn one_key_one_ca_byte_for_byte() {
        let a = ClusterCa::derive(&ClusterKey::from_bytes([1; KEY_LEN])).unwrap();
        let b = ClusterCa::derive(&ClusterKey::from_bytes([1; KEY_LEN])).unwrap();
        let c = ClusterCa::derive(&ClusterKey::from_bytes([2; KEY_LEN])).unwrap();
        assert_eq!(a.cert_der(), b.cert_der());
        assert_ne!(a.cert_der(), c.cert_der());
    }

    /// Runs one connection between a terminator-like server and a client
    /// built from the given keys; the server sends its ready byte when
    /// `ready`. Whether the client got through and its bytes arrived.
    async fn talk(server_key: [u8; KEY_LEN], client_key: [u8; KEY_LEN], ready: bool) -> bool {
        let tls = |k, id| {
            let key = ClusterKey::from_bytes(k);
            Tls::new(Some(&key), None, id).unwrap().unwrap()
        };
        let (server, client) = (tls(server_key, "s1"), tls(client_key, "c1"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = server.accept(tcp).await.ok()?;
            if !ready {
                return None; // the local service "did not answer"
            }
            super::ready(&mut tls).await.ok()?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.ok()?;
            Some(buf)
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let sent = match client.connect(tcp).await {
            Ok(mut tls) => tls.write_all(b"ping").await.is_ok(),
            Err(_) => false,
        };
        let got = accept.await.unwrap();
        sent && got == Some(*b"ping")
    }

    #[tokio::test]
    async fn members_talk_and_strangers_do_not() {
        assert!(talk([3; KEY_LEN], [3; KEY_LEN], true).await);
        assert!(!talk([3; KEY_LEN], [4; KEY_LEN], true).await);
    }

    #[test]
    fn renewal_follows_the_wall_clock() {
        let t0 = SystemTime::now();
        assert!(!renewal_due(t0, t0 + RENEW_EVERY - Duration::from_secs(1)));
        assert!(renewal_due(t0, t0 + RENEW_EVERY));
        // Woken from a long suspend: long past, renewed at the next check.
        assert!(renewal_due(t0, t0 + NODE_CERT_LIFETIME * 2));
        assert!(
            renewal_due(t0, t0 - Duration::from_secs(3600)),
            "clock stepped back"
        );
    }

    #[tokio::test]
    async fn a_terminator_whose_service_is_down_fails_the_connect() {
        assert!(!talk([3; KEY_LEN], [3; KEY_LEN], false).await);
    }

    #[test]
    fn an_expired_node_certificate_is_refused() {
        let ca = ClusterCa::derive(&ClusterKey::from_bytes([5; KEY_LEN])).unwrap();
        let old = SystemTime::now() - NODE_CERT_LIFETIME - Duration::from_secs(60);
        let id = ca.issue("n1", old).unwrap();
        let mut store = RootCertStore::empty();
        store.add(ca.cert_der().clone()).unwrap();
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(store), default_provider())
                .build()
                .unwrap();
        let member = MemberVerifier(verifier);
        let name = ServerName::try_from("amb-n1.local").unwrap();
        let now = UnixTime::now();
        assert!(member
            .verify_server_cert(&id.chain[0], &[], &name, &[], now)
            .is_err());
        let fresh = ca.issue("n1", SystemTime::now()).unwrap();
        let other_name = ServerName::try_from("elsewhere.example").unwrap();
        assert!(
            member
                .verify_server_cert(&fresh.chain[0], &[], &other_name, &[], now)
                .is_ok(),
            "membership, not the name, is checked"
        );
    }
}
