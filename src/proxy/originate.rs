//! TLS origination to servers outside the mesh (DestinationRule SIMPLE and MUTUAL): the client
//! configuration built from the files a [`pb::ClientTls`] names, cached for a short while so a
//! handshake does not re-read them, yet a rotated file is picked up within [`CACHE_TTL`].
//!
//! Verification: against `ca_certificates` (else the system bundle at [`SYSTEM_ROOTS`]); the
//! server name is `sni` (else the endpoint's address); with `subject_alt_names` the leaf must
//! carry one of them as a DNS or URI SAN instead of the usual hostname check. Refused, fail
//! closed: `credential_name` (a Secret the proxy cannot read) and `ca_crl` (revocation lists
//! are not supported yet, and ignoring one would accept what the user meant to revoke).

use std::collections::HashMap;
use std::io::Read as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, RootCertStore};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::xds::proto::palisade_v1 as pb;

/// Largest credential file read (certificates, keys, CA bundles; the system bundle is ~200 KiB).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// The system trust bundle used when a rule names no CA file (Debian's path).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// How long a built configuration is reused before its files are read again.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Most cached configurations (one per distinct rule TLS setting).
pub const MAX_CACHED: usize = 256;

/// Why TLS cannot be originated as the rule asks. Each fails the connection (closed).
#[derive(Debug, thiserror::Error)]
pub enum OriginateError {
    #[error("credentialName {0:?}: the proxy cannot read Secrets; use file paths")]
    CredentialName(String),
    #[error("caCrl {0:?}: revocation lists are not supported")]
    Crl(String),
    #[error("MUTUAL needs clientCertificate and privateKey")]
    MissingClientCredentials,
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("sni {0:?} is not a valid server name")]
    BadSni(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A configuration and the name to present, ready for `TlsConnector::connect`.
#[derive(Clone, Debug)]
pub struct Originated {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// Reads at most [`MAX_FILE_BYTES`] of `path`; a larger file is an error, not truncated.
pub fn read_bounded(path: &str) -> Result<Vec<u8>, OriginateError> {
    let fail = |message: String| OriginateError::File {
        path: path.to_string(),
        message,
    };
    let file = std::fs::File::open(Path::new(path)).map_err(|e| fail(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(fail(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    Ok(bytes)
}

fn certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, OriginateError> {
    let certs = crate::ca::pem::parse_certs(&read_bounded(path)?).map_err(|message| {
        OriginateError::File {
            path: path.into(),
            message,
        }
    })?;
    if certs.is_empty() {
        return Err(OriginateError::File {
            path: path.into(),
            message: "no PEM certificate".into(),
        });
    }
    Ok(certs)
}

/// Builds the configuration for a SIMPLE or MUTUAL `tls` to an endpoint at `ip`.
pub fn build(tls: &pb::ClientTls, ip: IpAddr) -> Result<Originated, OriginateError> {
    if !tls.credential_name.is_empty() {
        return Err(OriginateError::CredentialName(tls.credential_name.clone()));
    }
    if !tls.ca_crl.is_empty() {
        return Err(OriginateError::Crl(tls.ca_crl.clone()));
    }
    let server_name = if tls.sni.is_empty() {
        ServerName::IpAddress(ip.into())
    } else {
        ServerName::try_from(tls.sni.clone())
            .map_err(|_| OriginateError::BadSni(tls.sni.clone()))?
    };
    let provider = super::tls::provider();
    let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify {
        Arc::new(SkipVerify(provider.clone()))
    } else {
        let path = if tls.ca_certificates.is_empty() {
            SYSTEM_ROOTS
        } else {
            &tls.ca_certificates
        };
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certificates(path)?);
        if added == 0 {
            return Err(OriginateError::File {
                path: path.into(),
                message: "no usable CA certificate".into(),
            });
        }
        let roots = Arc::new(roots);
        if tls.expected_identities.is_empty() {
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?
        } else {
            Arc::new(SanVerifier {
                roots,
                provider: provider.clone(),
                sans: tls.expected_identities.clone(),
            })
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mutual = tls.mode == pb::client_tls::Mode::Mutual as i32;
    let mut config = if mutual {
        if tls.client_certificate.is_empty() || tls.private_key.is_empty() {
            return Err(OriginateError::MissingClientCredentials);
        }
        let chain = certificates(&tls.client_certificate)?;
        let key = PrivateKeyDer::from_pem_slice(&read_bounded(&tls.private_key)?).map_err(|e| {
            OriginateError::File {
                path: tls.private_key.clone(),
                message: format!("no usable private key: {e}"),
            }
        })?;
        builder.with_client_auth_cert(chain, key)?
    } else {
        builder.with_no_client_auth()
    };
    config.resumption = Resumption::disabled();
    Ok(Originated {
        config: Arc::new(config),
        server_name,
    })
}

/// The rule's TLS setting (encoded) and the endpoint address.
type CacheKey = (Vec<u8>, IpAddr);

/// Configurations by rule TLS setting and endpoint address, each kept for [`CACHE_TTL`].
#[derive(Debug, Default)]
pub struct OriginateCache {
    entries: Mutex<HashMap<CacheKey, (Instant, Originated)>>,
}

impl OriginateCache {
    /// The configuration for `tls` to `ip`, built (files read) at most once per TTL.
    pub fn get(&self, tls: &pb::ClientTls, ip: IpAddr) -> Result<Originated, OriginateError> {
        let key = (prost::Message::encode_to_vec(tls), ip);
        let now = Instant::now();
        {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((built, o)) = entries.get(&key)
                && now.duration_since(*built) < CACHE_TTL
            {
                return Ok(o.clone());
            }
        }
        let originated = build(tls, ip)?;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_CACHED {
            entries.retain(|_, (built, _)| now.duration_since(*built) < CACHE_TTL);
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
        }
        entries.insert(key, (now, originated.clone()));
        Ok(originated)
    }
}

/// Chain to the rule's CA, then one of the rule's subjectAltNames (DNS, case-insensitive, or
/// URI) instead of a hostname check.
#[derive(Debug)]
struct SanVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    sans: Vec<String>,
}

/// Whether `leaf` carries one of `wanted` as a DNS or URI SAN.
pub fn has_one_of_sans(leaf: &CertificateDer<'_>, wanted: &[String]) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(leaf.as_ref()) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|n| match n {
        GeneralName::DNSName(d) => wanted.iter().any(|w| w.eq_ignore_ascii_case(d)),
        GeneralName::URI(u) => wanted.iter().any(|w| w == u),
        _ => false,
    })
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if !has_one_of_sans(end_entity, &self.sans) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    crate::net::tls::handshake_signatures!(provider);
}

/// `insecureSkipVerify`: the rule asked not to verify the server's certificate. Handshake
/// signatures are still checked (they prove the key, not the identity). Also what an HTTPS
/// app probe uses: kubelet does not verify the app's certificate either.
#[derive(Debug)]
pub(crate) struct SkipVerify(pub(crate) Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    crate::net::tls::handshake_signatures!(0);
}

#[cfg(test)]
#[path = "originate_tests.rs"]
mod tests;
