//! The workload identity: a P-256 key made in memory, a certificate for it from the CA
//! (`CreateCertificate` with the projected service-account token), checked before use
//! ([`crate::ca::client::verify_issued`]: our key, exactly our SPIFFE ID, chains to the bundle),
//! and published on a watch channel that every new handshake reads.
//!
//! Renewal happens at 40–50 % of the lifetime (jitter spreads a fleet's renewals), each time
//! with a fresh key and a freshly read token (the kubelet rotates it). A failed attempt is
//! retried with exponential backoff while the current certificate keeps serving; established
//! connections never notice a renewal. The schedule is pure ([`renewal_delay`],
//! [`failure_backoff`]) and the loop ([`run`]) takes its certificates from an [`Issuer`], so
//! both are tested on paused time.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::metrics::ProxyMetrics;
use super::state::{Identity, Trust};
use super::trust;
use crate::ca::client::{
    CaClient, ClientError, ExpectedIdentity, KeyAlgorithm, WorkloadCertificate,
};

/// Largest token file accepted (a projected token is about 1 KiB).
pub const MAX_TOKEN_BYTES: u64 = 64 * 1024;
/// Renewal starts at this fraction of the lifetime, plus up to [`RENEW_JITTER`].
pub const RENEW_AT: f64 = 0.40;
/// The random part of the renewal point (so renewal lands between 40 % and 50 %).
pub const RENEW_JITTER: f64 = 0.10;
/// Never renew sooner than this after a success (a CA handing out near-expired certificates
/// must not turn the agent into a busy loop).
pub const MIN_RENEWAL_DELAY: Duration = Duration::from_secs(1);
/// First retry after a failure; doubles per consecutive failure.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between failed attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why no certificate was obtained this time.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The token file could not be read, is empty or too large.
    #[error("token file {path}: {message}")]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The CA could not be reached, refused, or returned something we do not trust.
    #[error(transparent)]
    Ca(#[from] ClientError),
    /// The checked chain and key do not make a usable rustls identity.
    #[error("the issued certificate is unusable: {0}")]
    Unusable(String),
}

/// How long to wait after obtaining a certificate valid from `not_before` to `not_after`, at
/// `now`: `RENEW_AT + jitter * RENEW_JITTER` of the lifetime that remains usable. The lifetime
/// counts from `now` when `not_before` lies in the past, since the CA backdates `not_before`
/// for clock skew and that part must not pull renewal forward. `jitter` is in `[0, 1]`
/// (clamped).
pub fn renewal_delay(
    now: SystemTime,
    not_before: SystemTime,
    not_after: SystemTime,
    jitter: f64,
) -> Duration {
    let start = now.max(not_before);
    let lifetime = not_after.duration_since(start).unwrap_or_default();
    let fraction = RENEW_AT + jitter.clamp(0.0, 1.0) * RENEW_JITTER;
    let wait = lifetime.mul_f64(fraction) + start.duration_since(now).unwrap_or_default();
    wait.max(MIN_RENEWAL_DELAY)
}

/// How long to wait after the `failures`-th consecutive failure (1-based): 1 s, 2 s, 4 s, ...
/// capped at [`MAX_BACKOFF`].
pub fn failure_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

/// A uniformly distributed fraction in `[0, 1)` from the system's CSPRNG (0.5 if it fails,
/// which only loses the spread).
pub fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Something that obtains a checked workload identity (the CA in production).
pub trait Issuer: Send + 'static {
    /// One attempt.
    fn issue(&mut self) -> impl Future<Output = Result<Identity, IdentityError>> + Send;
}

/// Where and as whom the agent asks the CA.
#[derive(Clone, Debug)]
pub struct CaIssuer {
    /// `host:port` of the CA.
    pub address: String,
    /// The name the CA's serving certificate must carry.
    pub server_name: String,
    /// The projected token, re-read on every attempt.
    pub token_file: PathBuf,
    /// Exactly our SPIFFE ID.
    pub expected: ExpectedIdentity,
    /// Lifetime to ask for (`None`: the CA's default).
    pub ttl: Option<Duration>,
    /// The bundle in force: the CA's serving certificate and the issued chain must chain to it.
    pub trust: watch::Receiver<Arc<Trust>>,
}

impl CaIssuer {
    fn read_token(&self) -> Result<String, IdentityError> {
        let fail = |message: String| IdentityError::Token {
            path: self.token_file.clone(),
            message,
        };
        let file = std::fs::File::open(&self.token_file).map_err(|e| fail(e.to_string()))?;
        let text = crate::read_text_limited(file, MAX_TOKEN_BYTES)
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| fail(format!("larger than {MAX_TOKEN_BYTES} bytes")))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(fail("empty".into()));
        }
        Ok(token.to_string())
    }
}

impl Issuer for CaIssuer {
    async fn issue(&mut self) -> Result<Identity, IdentityError> {
        let token = self.read_token()?;
        let roots = trust::to_pem(&self.trust.borrow());
        let mut client = CaClient::connect(&self.address, &roots, &self.server_name).await?;
        let issued = client
            .request(&token, KeyAlgorithm::EcdsaP256, self.ttl, &self.expected)
            .await?;
        build(&issued)
    }
}

/// Turns a checked certificate into the identity the listeners present: the chain as the CA
/// returned it (leaf first) with the in-memory key, the leaf's serial and validity.
pub fn build(issued: &WorkloadCertificate) -> Result<Identity, IdentityError> {
    let unusable = |m: String| IdentityError::Unusable(m);
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(|e| unusable(format!("key: {e}")))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| unusable(format!("key: {e}")))?;
    let chain = issued
        .chain_pem
        .iter()
        .map(|p| CertificateDer::from_pem_slice(p.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(format!("chain: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| unusable("empty chain".into()))?;
    let (_, cert) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|e| unusable(format!("leaf: {e}")))?;
    let validity = cert.validity();
    let to_system = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        match u64::try_from(secs) {
            Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
            Err(_) => SystemTime::UNIX_EPOCH,
        }
    };
    let serial = crate::hex(cert.raw_serial());
    let (not_before, not_after) = (
        to_system(validity.not_before),
        to_system(validity.not_after),
    );
    Ok(Identity {
        spiffe_id: issued.spiffe_id.clone(),
        certified: Arc::new(CertifiedKey::new(chain, signing)),
        chain_pem: issued.chain_pem.clone(),
        serial,
        not_before,
        not_after,
    })
}

/// Seconds from `now` until `identity` expires (negative once expired): the
/// `certificate_expiry_seconds` gauge.
pub fn seconds_to_expiry(identity: &Identity, now: SystemTime) -> i64 {
    match identity.not_after.duration_since(now) {
        Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Obtains the first identity and keeps it fresh, publishing each on `tx`. Runs until every
/// receiver is gone. `jitter` supplies the random part of each renewal point.
pub async fn run<I: Issuer>(
    mut issuer: I,
    tx: watch::Sender<Option<Arc<Identity>>>,
    metrics: ProxyMetrics,
    mut jitter: impl FnMut() -> f64 + Send,
) {
    let mut failures: u32 = 0;
    loop {
        let wait = match issuer.issue().await {
            Ok(identity) => {
                failures = 0;
                let now = SystemTime::now();
                metrics.renewals.inc();
                metrics
                    .certificate_expiry_seconds
                    .set(seconds_to_expiry(&identity, now));
                let wait = renewal_delay(now, identity.not_before, identity.not_after, jitter());
                tracing::info!(
                    spiffe_id = %identity.spiffe_id,
                    serial = %identity.serial,
                    expires_in_s = seconds_to_expiry(&identity, now),
                    renew_in_s = wait.as_secs(),
                    "workload certificate obtained; new handshakes use it"
                );
                tx.send_replace(Some(Arc::new(identity)));
                wait
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                metrics.renewal_failures.inc();
                let wait = failure_backoff(failures);
                let current = tx.borrow().clone();
                match current {
                    Some(id) if id.not_after > SystemTime::now() => tracing::warn!(
                        error = %e, failures, retry_in_s = wait.as_secs(),
                        expires_in_s = seconds_to_expiry(&id, SystemTime::now()),
                        "certificate renewal failed; the current certificate keeps serving"
                    ),
                    Some(_) => tracing::error!(
                        error = %e, failures, retry_in_s = wait.as_secs(),
                        "certificate renewal failed and the current certificate has EXPIRED; peers will refuse this proxy"
                    ),
                    None => tracing::error!(
                        error = %e, failures, retry_in_s = wait.as_secs(),
                        "no workload certificate yet; the proxy cannot serve mesh traffic"
                    ),
                }
                wait
            }
        };
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
#[path = "identity_tests.rs"]
pub(crate) mod tests;
