//! The signing CA and the issuance rules of semantics.md ("Certificate authority").
//!
//! Everything here is a pure function of its inputs plus the clock value passed in, so the rules
//! are tested without a network, a store or a real clock.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest};

use super::keys::{self, KeyError};
use super::pem;
use super::spiffe::Identity;

/// Lifetime of the self-signed root.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(3652 * 24 * 3600);
/// NotBefore is backdated by this much so a workload whose clock runs a little behind accepts
/// a fresh certificate.
pub const BACKDATE: Duration = Duration::from_secs(120);
/// Largest CSR accepted (PEM text). Real CSRs are well under 4 KiB, even for RSA 4096.
pub const MAX_CSR_BYTES: usize = 64 * 1024;
/// Share of a CA certificate's life after which it is re-issued.
pub const RENEW_AT_FRACTION: f64 = 0.8;

/// The configurable part of issuance.
#[derive(Clone, Debug)]
pub struct IssuancePolicy {
    pub trust_domain: String,
    /// Lifetime when the request asks for none (validity_duration 0).
    pub default_ttl: Duration,
    /// Longest lifetime a request may ask for; longer requests are rejected, not shortened.
    pub max_ttl: Duration,
}

impl Default for IssuancePolicy {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// Why a certificate was not issued. [`IssueError::reason`] is the metric label.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IssueError {
    #[error("CSR is {size} bytes, more than the {max} accepted")]
    CsrTooLarge { size: usize, max: usize },
    #[error("malformed CSR: {0}")]
    MalformedCsr(String),
    #[error("CSR signature does not verify")]
    BadCsrSignature,
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    #[error("invalid validity duration {0} s")]
    InvalidTtl(i64),
    #[error("requested validity {requested} s exceeds the maximum {max} s")]
    TtlOverMax { requested: u64, max: u64 },
    #[error("the issuing CA certificate has expired")]
    IssuerExpired,
    #[error("signing failed: {0}")]
    Signing(String),
}

impl IssueError {
    /// A short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::CsrTooLarge { .. } => "csr_too_large",
            Self::MalformedCsr(_) => "malformed_csr",
            Self::BadCsrSignature => "bad_csr_signature",
            Self::UnsupportedKey(_) => "unsupported_key",
            Self::InvalidTtl(_) => "invalid_ttl",
            Self::TtlOverMax { .. } => "ttl_over_max",
            Self::IssuerExpired => "issuer_expired",
            Self::Signing(_) => "internal",
        }
    }

    /// True when the request was at fault (InvalidArgument), false for server-side failures.
    pub fn is_caller_error(&self) -> bool {
        !matches!(self, Self::IssuerExpired | Self::Signing(_))
    }
}

/// Why CA material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA private key: {0}")]
    Key(String),
    #[error("CA certificate: {0}")]
    Certificate(String),
    #[error("the CA private key does not match the CA certificate")]
    KeyMismatch,
    #[error("certificate {0:?} is not a CA (basicConstraints cA / keyCertSign missing)")]
    NotCa(String),
    #[error("chain: {0}")]
    Chain(String),
    #[error("generating CA material: {0}")]
    Generate(String),
}

/// A certificate issued to a workload.
#[derive(Clone, Debug)]
pub struct Issued {
    /// One PEM certificate per element: leaf first, root last.
    pub chain_pem: Vec<String>,
    pub serial_hex: String,
    pub not_after: SystemTime,
}

/// A serving certificate for the control plane's own TLS endpoints.
#[derive(Debug)]
pub struct ServingMaterial {
    /// Leaf first, then the issuing CA and intermediates (not the root).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The CA that signs: its key, its certificate, and the chain above it up to the root.
pub struct SigningCa {
    issuer: Issuer<'static, KeyPair>,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
    /// The signing certificate, its intermediates, and the root last (PEM).
    chain_pem: Vec<String>,
    /// Same, DER, without the root (what a TLS server sends after its leaf).
    intermediates: Vec<CertificateDer<'static>>,
    root: CertificateDer<'static>,
}

impl std::fmt::Debug for SigningCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCa")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

pub(crate) fn asn1_to_system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Unix seconds of a time (negative times clamp to 0; certificates never need them).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// 20 random octets with the top bit clear: a positive DER INTEGER of at most 20 octets
/// (RFC 5280) carrying 159 random bits, far above the 128 asked for.
pub fn random_serial() -> Result<SerialNumber, IssueError> {
    let mut bytes = [0u8; 20];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| IssueError::Signing("no randomness".into()))?;
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        // Keep the full length so the encoding is always 20 octets.
        bytes[0] = 1;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

/// True once `fraction` of the validity window has elapsed.
pub fn needs_renewal(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    fraction: f64,
) -> bool {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    now >= not_before + life.mul_f64(fraction)
}

fn root_params(now: SystemTime) -> Result<CertificateParams, IssueError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "palisade");
    dn.push(DnType::CommonName, "Palisade root CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// Creates a new self-signed ECDSA P-256 root: returns (key PEM, certificate PEM).
pub fn generate_root(now: SystemTime) -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::Generate(e.to_string()))?;
    let cert = reissue_root(&key, now)?;
    Ok((key.serialize_pem(), cert))
}

/// Re-issues the root with the same key (and so the same subject and key identifier): everything
/// signed by the old certificate keeps verifying against the new one.
pub fn reissue_root(key: &KeyPair, now: SystemTime) -> Result<String, CaError> {
    let params = root_params(now).map_err(|e| CaError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(key)
        .map_err(|e| CaError::Generate(e.to_string()))?;
    Ok(cert.pem())
}

impl SigningCa {
    /// Builds a signing CA from its key, its certificate and the chain above it (intermediates,
    /// then the root; empty when the certificate is itself the root). Checks that the key
    /// matches and that the certificate is a CA; chain signatures are checked by the caller
    /// that loads external material (`plugin`).
    pub fn new(
        key_pem: &str,
        cert: CertificateDer<'static>,
        above: Vec<CertificateDer<'static>>,
    ) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Key(e.to_string()))?;
        let (_, x509) = X509Certificate::from_der(cert.as_ref())
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::KeyMismatch);
        }
        check_is_ca(&x509)?;
        let not_before = asn1_to_system_time(x509.validity().not_before);
        let not_after = asn1_to_system_time(x509.validity().not_after);
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        let mut chain_pem = vec![pem::cert_to_pem(&cert)];
        chain_pem.extend(above.iter().map(|c| pem::cert_to_pem(c)));
        let (root, intermediates) = match above.split_last() {
            Some((root, rest)) => {
                let mut inter = vec![cert.clone()];
                inter.extend(rest.iter().cloned());
                (root.clone(), inter)
            }
            None => (cert.clone(), Vec::new()),
        };
        Ok(Self {
            issuer,
            key_pem: key_pem.to_string(),
            cert_der: cert,
            not_before,
            not_after,
            chain_pem,
            intermediates,
            root,
        })
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The root this CA chains to.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// Signs a workload certificate for `identity` from a PEM CSR, per semantics.md.
    /// `requested_ttl_secs` is the request's validity_duration (0 = default).
    pub fn issue_workload(
        &self,
        policy: &IssuancePolicy,
        identity: &Identity,
        csr_pem: &str,
        requested_ttl_secs: i64,
        now: SystemTime,
    ) -> Result<Issued, IssueError> {
        let public_key = verified_csr_key(csr_pem)?;
        let ttl = match requested_ttl_secs {
            0 => policy.default_ttl.min(policy.max_ttl),
            s if s < 0 => return Err(IssueError::InvalidTtl(s)),
            s => Duration::from_secs(s as u64),
        };
        if ttl > policy.max_ttl {
            return Err(IssueError::TtlOverMax {
                requested: ttl.as_secs(),
                max: policy.max_ttl.as_secs(),
            });
        }
        let not_after = (now + ttl).min(self.not_after);
        if not_after <= now {
            return Err(IssueError::IssuerExpired);
        }
        let spiffe = identity.spiffe_id(&policy.trust_domain);
        let mut params = CertificateParams::default();
        // Empty subject: the identity lives only in the (then critical) URI SAN.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(spiffe.try_into().map_err(|_| {
                IssueError::Signing("SPIFFE ID not IA5".into())
            })?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial()?;
        let serial_hex = crate::hex(serial.as_ref());
        params.serial_number = Some(serial);
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        let mut chain_pem = Vec::with_capacity(self.chain_pem.len() + 1);
        chain_pem.push(cert.pem());
        chain_pem.extend(self.chain_pem.iter().cloned());
        Ok(Issued {
            chain_pem,
            serial_hex,
            not_after,
        })
    }

    /// Issues a serving certificate (fresh P-256 key) for the control plane's own endpoints.
    pub fn issue_serving(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<ServingMaterial, IssueError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "palisade-controller");
        params.distinguished_name = dn;
        let mut sans = Vec::new();
        for name in dns_names {
            let ia5 = name
                .clone()
                .try_into()
                .map_err(|_| IssueError::Signing(format!("DNS name {name:?} is not IA5")))?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        let not_before = now - BACKDATE;
        let not_after = (now + ttl).min(self.not_after);
        if not_after <= now {
            return Err(IssueError::IssuerExpired);
        }
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        Ok(ServingMaterial {
            chain,
            key,
            not_before,
            not_after,
        })
    }
}

/// A CA certificate must say so: basicConstraints cA, and keyCertSign when KeyUsage is present.
pub(crate) fn check_is_ca(x509: &X509Certificate<'_>) -> Result<(), CaError> {
    let subject = x509.subject().to_string();
    if !x509.is_ca() {
        return Err(CaError::NotCa(subject));
    }
    match x509.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => Err(CaError::NotCa(subject)),
        Ok(_) => Ok(()),
        Err(e) => Err(CaError::Certificate(format!("{subject}: {e}"))),
    }
}

/// Parses a PEM CSR, checks its size, key type and signature, and returns its public key.
/// Nothing else from the CSR is used: subject and SANs come from the authenticated identity.
pub fn verified_csr_key(csr_pem: &str) -> Result<rcgen::SubjectPublicKeyInfo, IssueError> {
    if csr_pem.len() > MAX_CSR_BYTES {
        return Err(IssueError::CsrTooLarge {
            size: csr_pem.len(),
            max: MAX_CSR_BYTES,
        });
    }
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| IssueError::MalformedCsr(format!("no PEM certificate request: {e}")))?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| IssueError::MalformedCsr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IssueError::MalformedCsr(
            "trailing data after the request".into(),
        ));
    }
    let info = &csr.certification_request_info;
    keys::classify(&info.subject_pki).map_err(|e| IssueError::UnsupportedKey(e.to_string()))?;
    keys::verify_signature(
        &info.subject_pki,
        &csr.signature_algorithm,
        info.raw,
        &csr.signature_value.data,
    )
    .map_err(|e| match e {
        KeyError::BadSignature => IssueError::BadCsrSignature,
        other => IssueError::UnsupportedKey(other.to_string()),
    })?;
    rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
        .map_err(|e| IssueError::UnsupportedKey(e.to_string()))
}
