//! `istio.v1.auth.IstioCertificateService/CreateCertificate`.
//!
//! Status codes: Unauthenticated (no or invalid credentials; the caller learns nothing more,
//! the server log has the detail), InvalidArgument (bad CSR, TTL over the maximum),
//! ResourceExhausted (load shed), Unavailable (token review backend down), Internal (never with
//! details).
//!
//! Callers authenticate with a bearer token. Renewal with a workload client certificate is
//! opt-in ([`CertificateRenewal`]): a leaked certificate must not be able to extend itself, so
//! when enabled the new certificate lives at most the default TTL, the old one must have been
//! issued by this CA's own signing certificate, and in a cluster its ServiceAccount must still
//! exist. [`CaService::identify`] is the one place that decides who a caller is (SDS uses it too).

use std::sync::Arc;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::proto::istio_v1_auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use super::proto::istio_v1_auth::{IstioCertificateRequest, IstioCertificateResponse};
use crate::auth::peer::{ServiceAccounts, identity_from_peer_cert, issued_by};
use crate::auth::{AuthError, Authenticator, Identity};
use crate::ca::{Authority, IssuancePolicy};

/// Largest request message accepted: a 64 KiB CSR plus room for metadata.
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;

/// Whether callers may authenticate with a workload client certificate instead of a token.
#[derive(Clone, Default)]
pub enum CertificateRenewal {
    /// Only tokens authenticate (the default): a certificate alone is Unauthenticated.
    #[default]
    Disabled,
    /// A still-valid workload certificate issued by this CA's signing certificate
    /// authenticates; with `service_accounts` (in a cluster) its ServiceAccount must exist.
    Enabled {
        /// Where ServiceAccounts are looked up; `None` in standalone mode (no cluster).
        service_accounts: Option<Arc<dyn ServiceAccounts>>,
    },
}

/// How a caller proved its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A bearer token (TokenReview or a standalone JWT).
    Token,
    /// A workload client certificate (renewal).
    Certificate,
}

/// An authenticated caller: who, and with what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The identity the caller proved.
    pub identity: Identity,
    /// The credential it proved it with.
    pub credential: Credential,
}

/// The validity_duration to issue with: a renewal by certificate never gets more than the
/// default TTL, whatever it asked for (asking is not an error; over the maximum still is, as
/// for everyone). Tokens get what they ask for, within the policy.
pub fn granted_ttl_secs(requested: i64, credential: Credential, policy: &IssuancePolicy) -> i64 {
    let default = i64::try_from(policy.default_ttl.as_secs()).unwrap_or(i64::MAX);
    let max = i64::try_from(policy.max_ttl.as_secs()).unwrap_or(i64::MAX);
    match credential {
        Credential::Certificate if requested > 0 && requested <= max => requested.min(default),
        _ => requested,
    }
}

/// The CA service: authenticates the caller, then asks the [`Authority`] to sign.
#[derive(Clone)]
pub struct CaService {
    authority: Arc<Authority>,
    authenticator: Arc<dyn Authenticator>,
    renewal: CertificateRenewal,
}

/// What the caller sees when authentication fails: nothing more than the code.
fn unauthenticated() -> Status {
    Status::unauthenticated("unauthenticated")
}

/// The bearer token of `authorization: Bearer <token>`, if that header is present.
/// A present but unusable header is an authentication failure, not a fall-back to certificates.
fn bearer_token(metadata: &MetadataMap) -> Option<Result<&str, AuthError>> {
    let value = metadata.get("authorization")?;
    let bad = |m: &str| AuthError::Unauthenticated(m.into());
    Some(
        value
            .to_str()
            .map_err(|_| bad("authorization header is not ASCII"))
            .and_then(|v| {
                let (scheme, token) = v
                    .split_once(' ')
                    .ok_or_else(|| bad("authorization is not Bearer"))?;
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return Err(bad("authorization is not Bearer"));
                }
                Ok(token.trim())
            }),
    )
}

impl CaService {
    pub fn new(authority: Arc<Authority>, authenticator: Arc<dyn Authenticator>) -> Self {
        Self {
            authority,
            authenticator,
            renewal: CertificateRenewal::Disabled,
        }
    }

    /// Allows (or not) renewal with a workload client certificate. Off unless set.
    pub fn with_certificate_renewal(mut self, renewal: CertificateRenewal) -> Self {
        self.renewal = renewal;
        self
    }

    /// The tonic server for this service, with the request size bound applied.
    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    /// The CA this service issues from.
    pub fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }

    /// Who is calling: the bearer token's identity, or (renewal enabled) the client
    /// certificate's. Every rule about who a caller is lives here.
    pub async fn identify<T>(&self, request: &Request<T>) -> Result<Caller, AuthError> {
        if let Some(token) = bearer_token(request.metadata()) {
            let identity = self.authenticator.authenticate(token?).await?;
            return Ok(Caller {
                identity,
                credential: Credential::Token,
            });
        }
        match request.peer_certs() {
            Some(chain) if !chain.is_empty() => Ok(Caller {
                identity: self.identify_certificate(&chain, SystemTime::now()).await?,
                credential: Credential::Certificate,
            }),
            _ => Err(AuthError::Unauthenticated(
                "no bearer token and no client certificate".into(),
            )),
        }
    }

    /// The identity of a client certificate chain (already verified against the trust bundle
    /// by the TLS layer), under the renewal rules.
    pub async fn identify_certificate(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<Identity, AuthError> {
        let CertificateRenewal::Enabled { service_accounts } = &self.renewal else {
            return Err(AuthError::Unauthenticated(
                "client certificate presented without a token, and certificate renewal is \
                 disabled (--allow-certificate-renewal)"
                    .into(),
            ));
        };
        issued_by(chain, self.authority.signing().cert_der(), now)?;
        let identity = identity_from_peer_cert(chain, &self.authority.policy().trust_domain, now)?;
        if let Some(accounts) = service_accounts
            && !accounts.exists(&identity).await?
        {
            return Err(AuthError::Unauthenticated(format!(
                "client certificate of {identity}: the ServiceAccount no longer exists"
            )));
        }
        Ok(identity)
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let requester = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let metrics = self.authority.metrics();
        let caller = match self.identify(&request).await {
            Ok(caller) => caller,
            Err(e) => {
                tracing::info!(requester, error = %e, "certificate request not authenticated");
                return Err(match e {
                    AuthError::Unauthenticated(_) => {
                        metrics.refuse("unauthenticated");
                        unauthenticated()
                    }
                    AuthError::Unavailable(_) => {
                        metrics.refuse("auth_unavailable");
                        Status::unavailable("authentication backend unavailable, retry later")
                    }
                    AuthError::Exhausted => {
                        metrics.refuse("shed");
                        Status::resource_exhausted("overloaded, retry later")
                    }
                });
            }
        };
        let req = request.into_inner();
        let identity = caller.identity;
        let ttl = granted_ttl_secs(
            req.validity_duration,
            caller.credential,
            self.authority.policy(),
        );
        match self.authority.issue(&identity, &req.csr, ttl, &requester) {
            Ok(issued) => Ok(Response::new(IstioCertificateResponse {
                cert_chain: issued.chain_pem,
            })),
            Err(e) if e.is_caller_error() => Err(Status::invalid_argument(e.to_string())),
            Err(e) => {
                tracing::error!(%identity, requester, error = %e, "certificate issuance failed");
                Err(Status::internal("internal error"))
            }
        }
    }
}

#[cfg(test)]
#[path = "ca_service_tests.rs"]
mod tests;
