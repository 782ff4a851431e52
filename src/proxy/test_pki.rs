//! Certificates for the proxy's unit tests: a real CA (the crate's own root generation and
//! workload issuance) plus hand-made leaves for the shapes issuance never produces (two URI
//! SANs, another trust domain, no URI SAN, expired).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::ca::authority::{IssuancePolicy, SigningCa, generate_root};
use crate::ca::pem;
use crate::proxy::state::{Identity, Trust};

/// A root CA.
pub struct TestCa {
    pub root: CertificateDer<'static>,
    root_pem: String,
    key_pem: String,
}

/// A leaf chain (leaf, root) with its key.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl TestCa {
    pub fn new() -> Self {
        let (key_pem, root_pem) = generate_root(SystemTime::now()).unwrap();
        let root = pem::parse_certs(root_pem.as_bytes()).unwrap().remove(0);
        Self {
            root,
            root_pem,
            key_pem,
        }
    }

    /// A workload certificate for `ns`/`sa` in trust domain `cluster.local`, issued the way the
    /// CA issues them.
    pub fn workload(&self, ns: &str, sa: &str) -> Leaf {
        let ca = SigningCa::new(&self.key_pem, self.root.clone(), vec![]).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let id = crate::ca::spiffe::Identity::new(ns, sa).unwrap();
        let issued = ca
            .issue_workload(&IssuancePolicy::default(), &id, &csr, 0, SystemTime::now())
            .unwrap();
        let chain = issued
            .chain_pem
            .iter()
            .map(|p| pem::parse_certs(p.as_bytes()).unwrap().remove(0))
            .collect();
        Leaf {
            chain,
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }

    /// A leaf with exactly these SANs, valid from `not_before` for `life`.
    pub fn custom(&self, sans: Vec<SanType>, not_before: SystemTime, life: Duration) -> Leaf {
        let issuer =
            Issuer::from_ca_cert_pem(&self.root_pem, KeyPair::from_pem(&self.key_pem).unwrap())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before.into();
        params.not_after = (not_before + life).into();
        let cert = params.signed_by(&key, &issuer).unwrap();
        Leaf {
            chain: vec![cert.der().clone(), self.root.clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }

    /// A valid leaf with these URI SANs.
    pub fn with_uris(&self, uris: &[&str]) -> Leaf {
        let sans = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        self.custom(
            sans,
            SystemTime::now() - Duration::from_secs(60),
            Duration::from_secs(3600),
        )
    }
}

impl Leaf {
    /// As the proxy's published identity.
    pub fn identity(&self, spiffe_id: &str) -> Arc<Identity> {
        let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&self.key).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(self.chain[0].as_ref()).unwrap();
        let serial = crate::hex(cert.raw_serial());
        Arc::new(Identity {
            spiffe_id: spiffe_id.into(),
            certified: Arc::new(CertifiedKey::new(self.chain.clone(), key)),
            chain_pem: self.chain.iter().map(|c| pem::cert_to_pem(c)).collect(),
            serial,
            not_before: SystemTime::now(),
            not_after: SystemTime::now() + Duration::from_secs(3600),
        })
    }
}

/// A trust bundle of these roots.
pub fn trust(roots: &[&CertificateDer<'static>]) -> Arc<Trust> {
    Arc::new(Trust {
        roots_pem: roots.iter().map(|r| pem::cert_to_pem(r)).collect(),
        roots: roots.iter().map(|r| (*r).clone()).collect(),
    })
}

/// The first flight of a rustls client offering `alpn`.
pub fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
    let mut config = rustls::ClientConfig::builder_with_provider(crate::proxy::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = "10.0.0.1".try_into().unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}
