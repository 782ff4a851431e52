//! A client of the CA's `CreateCertificate`: make a fresh key, send a CSR with a bearer token
//! over TLS that trusts only the mesh's roots, and take the chain back. `palisade certificate`
//! uses it to check a control plane by hand; the proxy's agent makes the same call.

use std::time::Duration;

use rcgen::{
    CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::xds::proto::istio_v1_auth::IstioCertificateRequest;
use crate::xds::proto::istio_v1_auth::istio_certificate_service_client::IstioCertificateServiceClient;

/// Most certificates accepted in a returned chain (a leaf, a few intermediates, a root).
pub const MAX_CHAIN_LEN: usize = 16;
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

/// A key and the chain the CA issued for it.
#[derive(Clone, Debug)]
pub struct WorkloadCertificate {
    /// The private key (PKCS#8 PEM). It never left this process.
    pub key_pem: String,
    /// One PEM certificate per element: leaf first, root last.
    pub chain_pem: Vec<String>,
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
    /// The CA answered, but not with a usable chain.
    #[error("the CA returned {0}")]
    BadChain(String),
}

/// A connection to the CA.
#[derive(Clone, Debug)]
pub struct CaClient {
    inner: IstioCertificateServiceClient<Channel>,
}

impl CaClient {
    /// Connects to `addr` (`host:port`) over TLS, trusting only the roots in `root_pem` and
    /// expecting the server certificate to name `server_name`.
    pub async fn connect(
        addr: &str,
        root_pem: &str,
        server_name: &str,
    ) -> Result<CaClient, ClientError> {
        let fail = |message: String| ClientError::Connect {
            addr: addr.to_string(),
            message,
        };
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
        })
    }

    /// Makes a fresh key of `algorithm`, asks for a certificate with `token` as the bearer
    /// credential, and returns key and chain. `ttl` None lets the CA choose (its default).
    pub async fn request(
        &mut self,
        token: &str,
        algorithm: KeyAlgorithm,
        ttl: Option<Duration>,
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
        let chain = response.cert_chain;
        if chain.is_empty() || chain.len() > MAX_CHAIN_LEN {
            return Err(ClientError::BadChain(format!(
                "a chain of {} certificates",
                chain.len()
            )));
        }
        if !chain
            .iter()
            .all(|pem| pem.contains("-----BEGIN CERTIFICATE-----"))
        {
            return Err(ClientError::BadChain(
                "an element that is not a PEM certificate".into(),
            ));
        }
        Ok(WorkloadCertificate {
            key_pem: key.serialize_pem(),
            chain_pem: chain,
        })
    }
}
