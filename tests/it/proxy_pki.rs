//! Certificates and handshake bytes for the proxy data-path tests: a real CA (the crate's root
//! generation and workload issuance) publishing identities the way the agent would.

use std::sync::Arc;
use std::time::SystemTime;

use palisade::ca::authority::{IssuancePolicy, SigningCa, generate_root};
use palisade::ca::pem;
use palisade::proxy::state::{Identity, Trust};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// The trust domain of every test identity.
pub const TD: &str = "cluster.local";

/// A root CA and its signer.
pub struct Ca {
    root: CertificateDer<'static>,
    signing: SigningCa,
}

impl Ca {
    pub fn new() -> Self {
        let (key, cert) = generate_root(SystemTime::now()).unwrap();
        let root = pem::parse_certs(cert.as_bytes()).unwrap().remove(0);
        let signing = SigningCa::new(&key, root.clone(), vec![]).unwrap();
        Self { root, signing }
    }

    /// A workload identity for `ns`/`sa`, as the agent would publish it.
    pub fn identity(&self, ns: &str, sa: &str) -> Arc<Identity> {
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let id = palisade::ca::spiffe::Identity::new(ns, sa).unwrap();
        let now = SystemTime::now();
        let issued = self
            .signing
            .issue_workload(&IssuancePolicy::default(), &id, &csr, 0, now)
            .unwrap();
        let chain: Vec<CertificateDer<'static>> = issued
            .chain_pem
            .iter()
            .map(|p| pem::parse_certs(p.as_bytes()).unwrap().remove(0))
            .collect();
        let der: PrivateKeyDer = PrivatePkcs8KeyDer::from(key.serialize_der()).into();
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).unwrap();
        Arc::new(Identity {
            spiffe_id: id.spiffe_id(TD),
            certified: Arc::new(CertifiedKey::new(chain, signer)),
            chain_pem: issued.chain_pem,
            serial: issued.serial_hex,
            not_before: now,
            not_after: issued.not_after,
        })
    }

    pub fn trust(&self) -> Arc<Trust> {
        Arc::new(Trust {
            roots_pem: vec![pem::cert_to_pem(&self.root)],
            roots: vec![self.root.clone()],
        })
    }
}

/// The first flight of a rustls client offering `alpn`.
pub fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), "app.example".try_into().unwrap()).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}
