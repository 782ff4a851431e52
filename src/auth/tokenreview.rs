//! Kubernetes ServiceAccount tokens checked with TokenReview.
//!
//! Istio's istiod sends one TokenReview per CSR and falls over at scale. Here: results are
//! cached by SHA-256 of the token for at most `cache_ttl` (60 s) and never past the token's own
//! `exp`; concurrent requests with the same token share one review (a [`SingleFlight`] whose
//! entry leaves with its last caller, answered or cancelled); at most `max_in_flight`
//! reviews run at once and excess callers are shed (ResourceExhausted) after a short wait
//! instead of queueing without bound. API-server failures fail closed (Unavailable).

use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;

use super::cache::{Lookup, TokenCache, TokenHash};
use super::{AuthError, Authenticator, Identity};
use crate::metrics::AuthMetrics;
use crate::singleflight::SingleFlight;

/// Tuning of the TokenReview authenticator.
#[derive(Clone, Debug)]
pub struct TokenReviewConfig {
    /// Audiences the token must be valid for (any of them).
    pub audiences: Vec<String>,
    /// Longest time an authenticated result is reused: short, so a deleted pod's token stops
    /// working soon.
    pub cache_ttl: Duration,
    /// Most cached tokens; when full, expired entries are dropped and new ones not cached.
    pub max_cache_entries: usize,
    /// Most TokenReviews in flight at once.
    pub max_in_flight: usize,
    /// How long a caller may wait for a free TokenReview slot before being shed.
    pub max_wait: Duration,
}

impl Default for TokenReviewConfig {
    fn default() -> Self {
        Self {
            audiences: vec!["palisade-ca".into()],
            cache_ttl: Duration::from_secs(60),
            max_cache_entries: 100_000,
            max_in_flight: 32,
            max_wait: Duration::from_millis(500),
        }
    }
}

/// See the module documentation.
pub struct TokenReviewAuthenticator {
    api: Api<TokenReview>,
    config: TokenReviewConfig,
    cache: TokenCache,
    in_flight: SingleFlight<TokenHash, Result<Identity, AuthError>>,
    permits: Semaphore,
    metrics: AuthMetrics,
}

impl TokenReviewAuthenticator {
    pub fn new(client: kube::Client, config: TokenReviewConfig, metrics: AuthMetrics) -> Self {
        Self {
            api: Api::all(client),
            permits: Semaphore::new(config.max_in_flight.max(1)),
            cache: TokenCache::new(config.cache_ttl, config.max_cache_entries),
            config,
            in_flight: SingleFlight::new(),
            metrics,
        }
    }

    async fn review(&self, token: &str) -> Result<Identity, AuthError> {
        let _permit = match tokio::time::timeout(self.config.max_wait, self.permits.acquire()).await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                self.metrics.review("shed");
                return Err(AuthError::Exhausted);
            }
        };
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(self.config.audiences.clone()),
            },
            ..Default::default()
        };
        let started = Instant::now();
        let result = self.api.create(&PostParams::default(), &review).await;
        self.metrics
            .review_seconds
            .observe(started.elapsed().as_secs_f64());
        let status = match result {
            Ok(r) => r.status.unwrap_or_default(),
            Err(e) => {
                self.metrics.review("error");
                return Err(AuthError::Unavailable(format!("TokenReview failed: {e}")));
            }
        };
        let unauthenticated = |m: String| {
            self.metrics.review("unauthenticated");
            Err(AuthError::Unauthenticated(m))
        };
        if status.authenticated != Some(true) {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or("not authenticated".into());
            return unauthenticated(format!("TokenReview: {why}"));
        }
        // The API server echoes the audiences the token is valid for; an empty list would mean
        // it ignored ours (old API servers), which we do not accept.
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.iter().any(|a| self.config.audiences.contains(a)) {
            return unauthenticated(format!("TokenReview: audiences {audiences:?} not accepted"));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        match Identity::from_username(&username) {
            Ok(id) => {
                self.metrics.review("authenticated");
                Ok(id)
            }
            Err(e) => unauthenticated(format!("TokenReview: {e}")),
        }
    }
}

#[async_trait::async_trait]
impl Authenticator for TokenReviewAuthenticator {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        let key = match self.cache.lookup(token, &self.metrics.cache_hits).await? {
            Lookup::Hit(id) => return Ok(id),
            Lookup::Miss(key) => key,
        };
        // Cached inside the shared review, before any caller sees the result, so a caller
        // arriving after the in-flight entry is gone finds the cache and never starts a second
        // review.
        self.in_flight
            .run(key, || async {
                let result = self.review(token).await;
                if let Ok(id) = &result {
                    self.cache.put(key, token, id.clone()).await;
                }
                result
            })
            .await
    }
}

#[cfg(test)]
#[path = "tokenreview_tests.rs"]
mod tests;
