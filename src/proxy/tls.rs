//! Mesh mTLS for the data path: rustls configurations that read the identity and trust watches
//! on every handshake, so a new certificate or bundle applies to the next handshake without
//! rebuilding anything, while established connections keep what they negotiated.
//!
//! Both sides: TLS 1.3 only, aws-lc-rs with X25519MLKEM768 offered first, ALPN [`MESH_ALPN`],
//! no session resumption (a resumed session would skip the peer-identity check against the
//! *current* expectations, and would show the previous certificate after a rotation).
//!
//! Identity checks (the same on both sides): the peer's chain verifies against the current
//! bundle and its leaf carries exactly one URI SAN, a SPIFFE workload ID of the mesh's trust
//! domain. The client additionally requires that ID to be one of the expected identities
//! (secure naming; no DNS-name check). Failures carry their detail in the error for the local
//! log; the peer only gets a generic TLS alert.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::sync::watch;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::MESH_ALPN;
use super::state::{Identity, Trust};

/// Most distinct expected-identity sets whose client configuration is kept (one per
/// destination service account set; a mesh has far fewer). Beyond it the cache starts afresh.
pub const MAX_CACHED_CLIENT_CONFIGS: usize = 1024;

/// Why a peer's certificate is not an acceptable mesh identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerIdentityError {
    /// The leaf does not parse as X.509.
    #[error("the leaf certificate does not parse")]
    Unparseable,
    /// Not exactly one URI SAN.
    #[error("the leaf has {0} URI SANs (exactly one SPIFFE ID expected)")]
    UriSanCount(usize),
    /// The URI SAN is not a SPIFFE workload ID of the mesh's trust domain.
    #[error("{uri:?} is not a SPIFFE workload ID of trust domain {trust_domain:?}")]
    NotMeshId { uri: String, trust_domain: String },
    /// A valid ID, but not one this connection may talk to (secure naming).
    #[error("server identity {found:?} is not one of {expected:?}")]
    NotExpected {
        found: String,
        expected: Arc<[String]>,
    },
    /// The proxy holds no certificate yet, so it cannot take part in mesh mTLS.
    #[error("no workload certificate yet")]
    NoIdentity,
}

impl PeerIdentityError {
    /// As a rustls error: a generic alert for the peer, the detail for our log.
    fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

/// The single SPIFFE ID in `leaf`'s URI SANs, if it is a workload ID of `trust_domain`.
pub fn peer_spiffe_id(
    leaf: &CertificateDer<'_>,
    trust_domain: &str,
) -> Result<String, PeerIdentityError> {
    let (_, cert) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|_| PeerIdentityError::Unparseable)?;
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        // A duplicated SAN extension is malformed: refuse rather than pick one.
        Err(_) => return Err(PeerIdentityError::Unparseable),
    };
    let [uri] = uris.as_slice() else {
        return Err(PeerIdentityError::UriSanCount(uris.len()));
    };
    crate::ca::spiffe::Identity::from_spiffe_id(uri, trust_domain).map_err(|_| {
        PeerIdentityError::NotMeshId {
            uri: (*uri).to_string(),
            trust_domain: trust_domain.to_string(),
        }
    })?;
    Ok((*uri).to_string())
}

/// The verified peer's SPIFFE ID after a mesh handshake (None when it presented nothing,
/// which a mesh handshake never completes with).
pub fn handshake_peer_id(conn: &rustls::CommonState, trust_domain: &str) -> Option<String> {
    let leaf = conn.peer_certificates()?.first()?;
    peer_spiffe_id(leaf, trust_domain).ok()
}

/// Presents the identity watch's current certificate (server and client side).
#[derive(Debug)]
pub struct IdentityResolver(pub watch::Receiver<Option<Arc<Identity>>>);

impl IdentityResolver {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().as_ref().map(|id| id.certified.clone())
    }
}

impl ResolvesServerCert for IdentityResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for IdentityResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.0.borrow().is_some()
    }
}

/// The trust watch's current roots, with the webpki client verifier built from them, rebuilt
/// only when the agent publishes a new bundle (compared by pointer: one `Arc` per publication).
#[derive(Debug)]
struct LiveRoots {
    trust: watch::Receiver<Arc<Trust>>,
    provider: Arc<CryptoProvider>,
    cache: RwLock<Option<Built>>,
}

#[derive(Debug, Clone)]
struct Built {
    trust: Arc<Trust>,
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl LiveRoots {
    fn current(&self) -> Result<Built, rustls::Error> {
        let trust = self.trust.borrow().clone();
        if let Ok(cache) = self.cache.read()
            && let Some(built) = cache.as_ref()
            && Arc::ptr_eq(&built.trust, &trust)
        {
            return Ok(built.clone());
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(trust.roots.iter().cloned());
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| {
                    tracing::error!(error = %e, added, ignored, "the trust bundle has no usable root: every mesh handshake fails");
                    rustls::Error::General("no usable trust anchors".into())
                })?;
        let built = Built {
            trust,
            roots,
            client_verifier,
        };
        if let Ok(mut cache) = self.cache.write() {
            *cache = Some(built.clone());
        }
        Ok(built)
    }
}

/// Server side: requires a client certificate chaining to the current bundle with exactly one
/// SPIFFE ID of the trust domain.
#[derive(Debug)]
pub struct MeshClientVerifier {
    roots: Arc<LiveRoots>,
    trust_domain: Arc<str>,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let built = self.roots.current()?;
        built
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        peer_spiffe_id(end_entity, &self.trust_domain).map_err(PeerIdentityError::into_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 only: never reached.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    crate::net::tls::handshake_signatures!(tls13_only: roots.provider);
}

/// Client side: the server's chain verifies against the current bundle (as a server
/// certificate) and its single SPIFFE ID is one of `expected`. The server name is ignored.
#[derive(Debug)]
pub struct MeshServerVerifier {
    roots: Arc<LiveRoots>,
    trust_domain: Arc<str>,
    expected: Arc<[String]>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let built = self.roots.current()?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &built.roots,
            intermediates,
            now,
            self.roots.provider.signature_verification_algorithms.all,
        )?;
        let found = peer_spiffe_id(end_entity, &self.trust_domain)
            .map_err(PeerIdentityError::into_rustls)?;
        if !self.expected.contains(&found) {
            return Err(PeerIdentityError::NotExpected {
                found,
                expected: self.expected.clone(),
            }
            .into_rustls());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    crate::net::tls::handshake_signatures!(tls13_only: roots.provider);
}

/// The crypto provider of every data-path configuration: aws-lc-rs, whose default key-exchange
/// order (with rustls' `prefer-post-quantum`) puts X25519MLKEM768 first.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The mesh mTLS configurations of one proxy. The server configuration is built once; client
/// configurations once per set of expected identities (the certificate and the bundle are read
/// per handshake, so neither a rotation nor a new bundle invalidates them).
#[derive(Debug)]
pub struct MeshTls {
    roots: Arc<LiveRoots>,
    identity: watch::Receiver<Option<Arc<Identity>>>,
    trust_domain: Arc<str>,
    server: Arc<ServerConfig>,
    clients: Mutex<HashMap<Arc<[String]>, Arc<ClientConfig>>>,
}

impl MeshTls {
    /// Configurations following `identity` and `trust`, accepting peers of `trust_domain`.
    pub fn new(
        identity: watch::Receiver<Option<Arc<Identity>>>,
        trust: watch::Receiver<Arc<Trust>>,
        trust_domain: &str,
    ) -> Result<Self, rustls::Error> {
        let provider = provider();
        let roots = Arc::new(LiveRoots {
            trust,
            provider: provider.clone(),
            cache: RwLock::new(None),
        });
        let trust_domain: Arc<str> = trust_domain.into();
        let verifier = Arc::new(MeshClientVerifier {
            roots: roots.clone(),
            trust_domain: trust_domain.clone(),
        });
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(IdentityResolver(identity.clone())));
        server.alpn_protocols = vec![MESH_ALPN.to_vec()];
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        Ok(Self {
            roots,
            identity,
            trust_domain,
            server: Arc::new(server),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The trust domain peers must belong to.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The configuration terminating inbound mesh mTLS.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The configuration originating mesh mTLS to a server that must present one of
    /// `expected` (order and duplicates do not matter). An empty set accepts no server.
    pub fn client_config(&self, expected: &[String]) -> Result<Arc<ClientConfig>, rustls::Error> {
        let mut key: Vec<String> = expected.to_vec();
        key.sort();
        key.dedup();
        let key: Arc<[String]> = key.into();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = clients.get(&key) {
            return Ok(config.clone());
        }
        let verifier = Arc::new(MeshServerVerifier {
            roots: self.roots.clone(),
            trust_domain: self.trust_domain.clone(),
            expected: key.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(self.roots.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(IdentityResolver(self.identity.clone())));
        config.alpn_protocols = vec![MESH_ALPN.to_vec()];
        config.resumption = Resumption::disabled();
        config.enable_sni = false;
        let config = Arc::new(config);
        if clients.len() >= MAX_CACHED_CLIENT_CONFIGS {
            clients.clear();
        }
        clients.insert(key, config.clone());
        Ok(config)
    }

    /// How many client configurations are cached (for tests of the bound).
    pub fn cached_client_configs(&self) -> usize {
        self.clients.lock().map_or(0, |c| c.len())
    }
}

/// The metric reason for a failed handshake or mesh connection (a closed set).
pub fn failure_reason(error: &std::io::Error) -> &'static str {
    if error.kind() == std::io::ErrorKind::TimedOut {
        return "handshake_timeout";
    }
    let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return "handshake_failed";
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<PeerIdentityError>() {
                Some(PeerIdentityError::NotExpected { .. }) => "identity_mismatch",
                Some(PeerIdentityError::NoIdentity) => "no_identity",
                Some(_) => "bad_identity",
                None => "untrusted_certificate",
            }
        }
        rustls::Error::InvalidCertificate(_) => "untrusted_certificate",
        rustls::Error::AlertReceived(_) => "refused_by_peer",
        _ => "handshake_failed",
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
