//! A client of the CA's `CreateCertificate`: make a fresh key, send a CSR with a bearer token
//! over TLS that trusts only the mesh's roots, and take the chain back — but only after checking
//! it: every element is one parseable certificate, the leaf holds our public key and exactly the
//! expected SPIFFE ID, and the chain verifies against the trust bundle ([`verify_issued`]).
//! `palisade certificate` uses it to check a control plane by hand; the proxy's agent makes the
//! same call, so a CA (or anything impersonating it) cannot hand a workload a certificate for
//! another identity, another key, or another trust anchor.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::bundle::TrustBundle;
use super::pem;
use super::spiffe::Identity;
use crate::xds::proto::istio_v1_auth::IstioCertificateRequest;
use crate::xds::proto::istio_v1_auth::istio_certificate_service_client::IstioCertificateServiceClient;

/// Most certificates accepted in a returned chain (a leaf, a few intermediates, a root).
pub const MAX_CHAIN_LEN: usize = 16;
/// Largest PEM text accepted for one chain element (real certificates are 1-2 KiB).
pub const MAX_CERT_PEM_BYTES: usize = 64 * 1024;
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Key algorithm of the workload key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA P-256 (the mesh default).
    #[default]
    EcdsaP256,
    /// ECDSA P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

/// The identity the caller expects the CA to certify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpectedIdentity {
    /// Exactly this SPIFFE ID: what a proxy uses, since it knows its namespace and service
    /// account.
    Exact(String),
    /// Any one SPIFFE workload ID (`spiffe://<td>/ns/<ns>/sa/<sa>`) of this trust domain: for
    /// diagnostics (`palisade certificate` asks which identity a token gets).
    AnyIn {
        /// The trust domain the ID must belong to.
        trust_domain: String,
    },
}

impl ExpectedIdentity {
    /// Exactly `identity` in `trust_domain`.
    pub fn exact(identity: &Identity, trust_domain: &str) -> Self {
        Self::Exact(identity.spiffe_id(trust_domain))
    }

    fn accepts(&self, uri: &str) -> bool {
        match self {
            Self::Exact(id) => uri == id,
            Self::AnyIn { trust_domain } => Identity::from_spiffe_id(uri, trust_domain).is_ok(),
        }
    }
}

impl std::fmt::Display for ExpectedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(id) => f.write_str(id),
            Self::AnyIn { trust_domain } => write!(f, "a workload ID of {trust_domain}"),
        }
    }
}

/// A key and the chain the CA issued for it, checked by [`verify_issued`].
#[derive(Clone)]
pub struct WorkloadCertificate {
    /// The private key (PKCS#8 PEM). It never left this process.
    pub key_pem: String,
    /// One PEM certificate per element: leaf first, root last.
    pub chain_pem: Vec<String>,
    /// The leaf's SPIFFE ID (checked against what was expected).
    pub spiffe_id: String,
}

/// The key never appears in logs or panic messages.
impl std::fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("key_pem", &"<redacted>")
            .field("chain_pem", &self.chain_pem)
            .field("spiffe_id", &self.spiffe_id)
            .finish()
    }
}

/// Why a returned chain was refused. Each is a reason to distrust the CA's answer, so the
/// caller keeps its current certificate (if any) and retries later.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// No certificate, or more than [`MAX_CHAIN_LEN`].
    #[error("a chain of {0} certificates (1 to {MAX_CHAIN_LEN} expected)")]
    Length(usize),
    /// Element `n` (1-based) is not exactly one PEM certificate of bounded size.
    #[error("chain element {0} is not exactly one PEM certificate")]
    NotPem(usize),
    /// Element `n` (1-based) is not a well-formed X.509 certificate.
    #[error("chain element {0} is not a parseable X.509 certificate")]
    Unparseable(usize),
    /// The leaf certifies some other key than the one we sent.
    #[error("the leaf certificate does not hold our public key")]
    WrongKey,
    /// The leaf does not carry exactly one URI SAN that is the expected SPIFFE ID.
    #[error("the leaf names {found:?}, expected {expected}")]
    WrongIdentity {
        /// The URI SANs found.
        found: Vec<String>,
        /// What was expected.
        expected: String,
    },
    /// The chain does not lead to a root of the trust bundle (or is expired, or lacks the
    /// clientAuth usage a workload certificate needs).
    #[error("the chain does not verify against the trust bundle: {0}")]
    Untrusted(String),
}

/// Why no certificate was obtained.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA address or root certificates are unusable, or the connection failed.
    #[error("connecting to the CA at {addr}: {message}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// Making the key or the CSR failed.
    #[error("making the key or CSR: {0}")]
    Key(String),
    /// The CA answered with an error status.
    #[error("the CA refused: {code:?}: {message}")]
    Refused {
        /// The gRPC status code (Unauthenticated, InvalidArgument, ...).
        code: tonic::Code,
        /// The CA's message (deliberately terse for authentication failures).
        message: String,
    },
    /// The CA answered, but not with a chain we can trust.
    #[error("the CA returned an unusable certificate: {0}")]
    BadChain(#[from] ChainError),
}

/// Checks a chain the CA returned for the key whose raw public key is `public_key` (the BIT
/// STRING of its SubjectPublicKeyInfo): every element is one parseable certificate, the leaf
/// holds that key and exactly one URI SAN that `expected` accepts, and the chain verifies (as a
/// client certificate, at `now`) against `bundle`. Returns the leaf's SPIFFE ID.
pub fn verify_issued(
    chain_pem: &[String],
    public_key: &[u8],
    expected: &ExpectedIdentity,
    bundle: &TrustBundle,
    now: UnixTime,
) -> Result<String, ChainError> {
    if chain_pem.is_empty() || chain_pem.len() > MAX_CHAIN_LEN {
        return Err(ChainError::Length(chain_pem.len()));
    }
    let mut chain: Vec<CertificateDer<'static>> = Vec::with_capacity(chain_pem.len());
    for (i, text) in chain_pem.iter().enumerate() {
        let n = i + 1;
        if text.len() > MAX_CERT_PEM_BYTES {
            return Err(ChainError::NotPem(n));
        }
        let mut certs = pem::parse_certs(text.as_bytes()).map_err(|_| ChainError::NotPem(n))?;
        let (Some(der), None) = (certs.pop(), certs.pop()) else {
            return Err(ChainError::NotPem(n));
        };
        match X509Certificate::from_der(der.as_ref()) {
            Ok(([], _)) => chain.push(der),
            _ => return Err(ChainError::Unparseable(n)),
        }
    }
    let (leaf_der, above) = chain.split_first().ok_or(ChainError::Length(0))?;
    let (_, leaf) =
        X509Certificate::from_der(leaf_der.as_ref()).map_err(|_| ChainError::Unparseable(1))?;
    if leaf.public_key().subject_public_key.data.as_ref() != public_key {
        return Err(ChainError::WrongKey);
    }
    let uris: Vec<String> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let spiffe_id = match uris.as_slice() {
        [one] if expected.accepts(one) => one.clone(),
        _ => {
            return Err(ChainError::WrongIdentity {
                found: uris,
                expected: expected.to_string(),
            });
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(bundle.root_store()), provider)
            .build()
            .map_err(|e| ChainError::Untrusted(e.to_string()))?;
    verifier
        .verify_client_cert(leaf_der, above, now)
        .map_err(|e| ChainError::Untrusted(e.to_string()))?;
    Ok(spiffe_id)
}

/// A connection to the CA, and the trust bundle its answers are checked against.
#[derive(Clone, Debug)]
pub struct CaClient {
    inner: IstioCertificateServiceClient<Channel>,
    bundle: TrustBundle,
}

impl CaClient {
    /// Connects to `addr` (`host:port`) over TLS, trusting only the roots in `root_pem` (the
    /// trust bundle, which issued chains must also verify against) and expecting the server
    /// certificate to name `server_name`.
    pub async fn connect(
        addr: &str,
        root_pem: &str,
        server_name: &str,
    ) -> Result<CaClient, ClientError> {
        let fail = |message: String| ClientError::Connect {
            addr: addr.to_string(),
            message,
        };
        let bundle = TrustBundle::from_pem(root_pem.as_bytes()).map_err(|e| fail(e.to_string()))?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(root_pem))
            .domain_name(server_name);
        let channel = Channel::from_shared(format!("https://{addr}"))
            .map_err(|e| fail(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .tls_config(tls)
            .map_err(|e| fail(e.to_string()))?
            .connect()
            .await
            .map_err(|e| fail(crate::error_chain(&e)))?;
        Ok(CaClient {
            inner: IstioCertificateServiceClient::new(channel),
            bundle,
        })
    }

    /// Makes a fresh key of `algorithm`, asks for a certificate with `token` as the bearer
    /// credential, checks the answer with [`verify_issued`] against `expected` and the trust
    /// bundle, and returns key and chain. `ttl` None lets the CA choose (its default).
    pub async fn request(
        &mut self,
        token: &str,
        algorithm: KeyAlgorithm,
        ttl: Option<Duration>,
        expected: &ExpectedIdentity,
    ) -> Result<WorkloadCertificate, ClientError> {
        let alg = match algorithm {
            KeyAlgorithm::EcdsaP256 => &PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Ed25519 => &PKCS_ED25519,
        };
        let key = KeyPair::generate_for(alg).map_err(|e| ClientError::Key(e.to_string()))?;
        // The CA sets the identity from the token whatever the CSR asks, so the CSR carries
        // only the public key.
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|e| ClientError::Key(e.to_string()))?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: ttl.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            metadata: None,
        });
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Key("the token is not a valid header value".into()))?;
        request.metadata_mut().insert("authorization", bearer);
        let response = self
            .inner
            .create_certificate(request)
            .await
            .map_err(|status| ClientError::Refused {
                code: status.code(),
                message: status.message().to_string(),
            })?
            .into_inner();
        let spiffe_id = verify_issued(
            &response.cert_chain,
            key.public_key_raw(),
            expected,
            &self.bundle,
            UnixTime::now(),
        )?;
        Ok(WorkloadCertificate {
            key_pem: key.serialize_pem(),
            chain_pem: response.cert_chain,
            spiffe_id,
        })
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
