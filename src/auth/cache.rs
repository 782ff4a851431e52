//! A cache of authenticated tokens, keyed by SHA-256 of the token (the token itself is never
//! kept), each entry living at most `ttl` and never past the token's own `exp`.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Mutex;

use super::{AuthError, Authenticator, Identity, check_token_size, unverified_jwt_exp};
use crate::ca::authority::unix_secs;
use crate::metrics::AuthMetrics;

/// SHA-256 of a token.
pub type TokenHash = [u8; 32];

pub fn sha256(token: &str) -> TokenHash {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// What [`TokenCache::lookup`] found.
pub enum Lookup {
    /// A cached identity.
    Hit(Identity),
    /// Not cached: the token's hash, to cache the result under.
    Miss(TokenHash),
}

/// Bounded map from token hash to identity with per-entry expiry.
pub struct TokenCache {
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<TokenHash, (Identity, Instant)>>,
}

impl TokenCache {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long a result for `token` may be cached: `ttl`, cut short by the token's `exp`
    /// (read unverified: the token was verified by the authenticator). `None`: do not cache.
    pub fn lifetime(&self, token: &str) -> Option<Duration> {
        match unverified_jwt_exp(token) {
            None => Some(self.ttl),
            Some(exp) => {
                let left = exp - unix_secs(SystemTime::now());
                (left > 0).then(|| self.ttl.min(Duration::from_secs(left as u64)))
            }
        }
    }

    /// The first step of every caching authenticator: bound the token's size, hash it and
    /// look it up, counting a hit in `hits`.
    pub async fn lookup(&self, token: &str, hits: &Counter) -> Result<Lookup, AuthError> {
        check_token_size(token)?;
        let key = sha256(token);
        Ok(match self.get(&key).await {
            Some(id) => {
                hits.inc();
                Lookup::Hit(id)
            }
            None => Lookup::Miss(key),
        })
    }

    pub async fn get(&self, key: &TokenHash) -> Option<Identity> {
        let mut entries = self.entries.lock().await;
        match entries.get(key) {
            Some((id, until)) if *until > Instant::now() => Some(id.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Caches `id` for `token` (if its lifetime allows). When full, expired entries are
    /// dropped; if it is still full the entry is not cached (memory stays bounded).
    pub async fn put(&self, key: TokenHash, token: &str, id: Identity) {
        let Some(lifetime) = self.lifetime(token) else {
            return;
        };
        let mut entries = self.entries.lock().await;
        let now = Instant::now();
        if entries.len() >= self.max_entries {
            entries.retain(|_, (_, until)| *until > now);
        }
        if entries.len() < self.max_entries {
            entries.insert(key, (id, now + lifetime));
        }
    }
}

/// Wraps an authenticator with a [`TokenCache`] (used for standalone JWTs, so the hot path of
/// issuance does not re-verify the same token's signature on every request).
pub struct CachingAuthenticator<A> {
    inner: A,
    cache: TokenCache,
    metrics: AuthMetrics,
}

impl<A> CachingAuthenticator<A> {
    pub fn new(inner: A, ttl: Duration, max_entries: usize, metrics: AuthMetrics) -> Self {
        Self {
            inner,
            cache: TokenCache::new(ttl, max_entries),
            metrics,
        }
    }
}

#[async_trait::async_trait]
impl<A: Authenticator> Authenticator for CachingAuthenticator<A> {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        let key = match self.cache.lookup(token, &self.metrics.cache_hits).await? {
            Lookup::Hit(id) => return Ok(id),
            Lookup::Miss(key) => key,
        };
        let id = self.inner.authenticate(token).await?;
        self.cache.put(key, token, id.clone()).await;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn jwt(exp: i64) -> String {
        let b = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b("{}".into()), b(format!("{{\"exp\":{exp}}}")))
    }

    #[test]
    fn lifetime_never_outlives_the_token() {
        let cache = TokenCache::new(Duration::from_secs(60), 10);
        let now = unix_secs(SystemTime::now());
        assert_eq!(cache.lifetime(&jwt(now - 1)), None);
        let short = cache.lifetime(&jwt(now + 10)).unwrap();
        assert!(short <= Duration::from_secs(10) && short >= Duration::from_secs(8));
        assert_eq!(
            cache.lifetime(&jwt(now + 3600)),
            Some(Duration::from_secs(60))
        );
        assert_eq!(cache.lifetime("opaque"), Some(Duration::from_secs(60)));
    }

    #[tokio::test]
    async fn bounded_size() {
        let cache = TokenCache::new(Duration::from_secs(60), 2);
        let id = Identity::new("a", "b").unwrap();
        for t in ["t1", "t2", "t3"] {
            cache.put(sha256(t), t, id.clone()).await;
        }
        assert!(cache.get(&sha256("t1")).await.is_some());
        assert!(cache.get(&sha256("t3")).await.is_none(), "full: not cached");
    }

    struct Counting(AtomicUsize);

    #[async_trait::async_trait]
    impl Authenticator for Counting {
        async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            match token {
                "good" => Ok(Identity::new("a", "b").unwrap()),
                _ => Err(AuthError::Unauthenticated("no".into())),
            }
        }
    }

    #[tokio::test]
    async fn caches_successes_only() {
        let metrics = AuthMetrics::default();
        let auth = CachingAuthenticator::new(
            Counting(AtomicUsize::new(0)),
            Duration::from_secs(60),
            100,
            metrics.clone(),
        );
        for _ in 0..3 {
            assert!(auth.authenticate("good").await.is_ok());
            assert!(auth.authenticate("bad").await.is_err());
        }
        assert_eq!(auth.inner.0.load(Ordering::SeqCst), 1 + 3);
        assert_eq!(metrics.cache_hits.get(), 2);
    }
}
