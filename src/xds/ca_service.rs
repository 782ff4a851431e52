//! `istio.v1.auth.IstioCertificateService/CreateCertificate`.
//!
//! Status codes: Unauthenticated (no or invalid credentials; the caller learns nothing more,
//! the server log has the detail), InvalidArgument (bad CSR, TTL over the maximum),
//! ResourceExhausted (load shed), Unavailable (token review backend down), Internal (never with
//! details).

use std::sync::Arc;
use std::time::SystemTime;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::proto::istio_v1_auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use super::proto::istio_v1_auth::{IstioCertificateRequest, IstioCertificateResponse};
use crate::auth::peer::identity_from_peer_cert;
use crate::auth::{AuthError, Authenticator, Identity};
use crate::ca::Authority;

/// Largest request message accepted: a 64 KiB CSR plus room for metadata.
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;

/// The CA service: authenticates the caller, then asks the [`Authority`] to sign.
#[derive(Clone)]
pub struct CaService {
    authority: Arc<Authority>,
    authenticator: Arc<dyn Authenticator>,
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
        }
    }

    /// The tonic server for this service, with the request size bound applied.
    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    pub(crate) async fn identify<T>(&self, request: &Request<T>) -> Result<Identity, AuthError> {
        if let Some(token) = bearer_token(request.metadata()) {
            return self.authenticator.authenticate(token?).await;
        }
        match request.peer_certs() {
            Some(chain) if !chain.is_empty() => identity_from_peer_cert(
                &chain,
                &self.authority.policy().trust_domain,
                SystemTime::now(),
            ),
            _ => Err(AuthError::Unauthenticated(
                "no bearer token and no client certificate".into(),
            )),
        }
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
        let identity = match self.identify(&request).await {
            Ok(id) => id,
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
        match self
            .authority
            .issue(&identity, &req.csr, req.validity_duration, &requester)
        {
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
