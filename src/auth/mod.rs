//! Who is calling: authenticators turn a credential into an [`Identity`].
//!
//! - [`tokenreview::TokenReviewAuthenticator`]: Kubernetes ServiceAccount tokens, checked by the
//!   API server (TokenReview), cached and single-flighted.
//! - [`jwt::LocalJwtAuthenticator`]: standalone mode, tokens signed by a key in the state dir.
//! - [`peer::identity_from_peer_cert`]: renewal with a still-valid workload certificate.

pub mod cache;
pub mod jwt;
pub mod peer;
pub mod tokenreview;

pub use crate::ca::spiffe::Identity;

use base64::Engine as _;

/// Longest bearer token accepted. Projected ServiceAccount tokens are about 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a caller was not authenticated. The message is for the server log only: callers get
/// the bare status (gRPC Unauthenticated / Unavailable / ResourceExhausted).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The credential is missing, malformed, expired, for another audience or not a
    /// service account.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The authentication backend (API server) failed: fail closed, the caller may retry.
    #[error("authentication backend unavailable: {0}")]
    Unavailable(String),
    /// Too many authentications in flight: shed load rather than queue without bound.
    #[error("too many token reviews in flight")]
    Exhausted,
}

/// Authenticates a bearer token. Object-safe so the server holds `Arc<dyn Authenticator>` and
/// the same code runs with TokenReview in a cluster and local JWTs standalone.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError>;
}

/// Checks the size bound shared by all token authenticators.
pub(crate) fn check_token_size(token: &str) -> Result<(), AuthError> {
    if token.is_empty() {
        return Err(AuthError::Unauthenticated("empty token".into()));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Unauthenticated(format!(
            "token of {} bytes exceeds {MAX_TOKEN_BYTES}",
            token.len()
        )));
    }
    Ok(())
}

/// The `exp` claim of a JWT, read WITHOUT verifying the signature: only used to bound how long
/// an API-server-verified result may be cached. `None` when absent or unreadable.
pub fn unverified_jwt_exp(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    if payload.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?;
    exp.as_i64().or_else(|| exp.as_f64().map(|f| f as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt_with(payload: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b("{\"alg\":\"RS256\"}"), b(payload))
    }

    #[test]
    fn exp_is_read_without_verification() {
        assert_eq!(
            unverified_jwt_exp(&jwt_with("{\"exp\":1700000000}")),
            Some(1_700_000_000)
        );
        assert_eq!(
            unverified_jwt_exp(&jwt_with("{\"exp\":1.5e9}")),
            Some(1_500_000_000)
        );
        assert_eq!(unverified_jwt_exp(&jwt_with("{\"sub\":\"x\"}")), None);
        assert_eq!(unverified_jwt_exp("opaque-token"), None);
        assert_eq!(unverified_jwt_exp("a.!!!.c"), None);
    }

    #[test]
    fn token_size_bounds() {
        assert!(check_token_size("").is_err());
        assert!(check_token_size(&"a".repeat(MAX_TOKEN_BYTES + 1)).is_err());
        assert!(check_token_size(&"a".repeat(MAX_TOKEN_BYTES)).is_ok());
    }
}
