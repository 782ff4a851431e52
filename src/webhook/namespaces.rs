//! Namespace labels for the injection decision. The API server does not send them with the
//! pod, so in a cluster they are read from the API (cached briefly: one GET per namespace per
//! [`CACHE_TTL`], not per pod); in standalone mode they come from the injection config.
//!
//! A namespace name comes from the AdmissionReview, so it is checked to be a DNS-1123 label
//! before it reaches a URL or a cache key; concurrent lookups of one namespace share one GET;
//! and a full cache evicts the least recently used entry, so a flood of distinct names cannot
//! push out the namespaces in use.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;

use crate::singleflight::SingleFlight;

/// How long a namespace's labels are reused. Label changes only matter for pods created
/// afterwards (existing pods must be restarted anyway), so a short delay is harmless.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Most namespaces cached; beyond that the least recently used is evicted (bounded memory).
pub const MAX_CACHED: usize = 10_000;
/// A lookup that takes longer fails, well inside the webhook's own deadline.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest namespace name (a DNS-1123 label).
pub const MAX_NAMESPACE_LEN: usize = 63;

/// Labels type.
pub type Labels = BTreeMap<String, String>;

/// Why a namespace's labels are unknown.
#[derive(Clone, Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("namespace {0:?} is not a valid namespace name (a DNS-1123 label)")]
    InvalidName(String),
    #[error("reading namespace {namespace}: {source}")]
    Kube {
        namespace: String,
        source: Arc<kube::Error>,
    },
    #[error("reading namespace {0}: timed out")]
    Timeout(String),
}

/// True for a DNS-1123 label, the only form a namespace name can take: 1 to 63 characters of
/// `a-z`, `0-9` and `-`, starting and ending with a letter or digit.
pub fn is_dns1123_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAMESPACE_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A name fit for an error message: at most a label's length, so an attacker's megabyte name
/// is not echoed back.
pub fn shown(name: &str) -> String {
    name.chars().take(MAX_NAMESPACE_LEN + 1).collect()
}

/// Where namespace labels come from.
#[async_trait::async_trait]
pub trait NamespaceLabels: Send + Sync {
    /// The labels of `namespace` (empty when it does not exist).
    async fn labels(&self, namespace: &str) -> Result<Labels, NamespaceError>;
}

/// Fixed labels (standalone mode: `namespaceLabels` in `injection.yaml`).
#[derive(Clone, Debug, Default)]
pub struct StaticNamespaces(pub BTreeMap<String, Labels>);

#[async_trait::async_trait]
impl NamespaceLabels for StaticNamespaces {
    async fn labels(&self, namespace: &str) -> Result<Labels, NamespaceError> {
        if !is_dns1123_label(namespace) {
            return Err(NamespaceError::InvalidName(shown(namespace)));
        }
        Ok(self.0.get(namespace).cloned().unwrap_or_default())
    }
}

/// A bounded map with least-recently-used eviction: `order` maps a use counter to its key, so
/// the oldest use is the first entry.
#[derive(Debug)]
pub struct LruCache<V> {
    capacity: usize,
    tick: u64,
    entries: HashMap<String, (V, Instant, u64)>,
    order: BTreeMap<u64, String>,
}

impl<V: Clone> LruCache<V> {
    /// An empty cache holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn touch(&mut self, key: &str) {
        self.tick += 1;
        if let Some((_, _, used)) = self.entries.get_mut(key) {
            self.order.remove(used);
            *used = self.tick;
            self.order.insert(self.tick, key.to_string());
        }
    }

    /// The value of `key` if it was stored less than `ttl` ago; counts as a use.
    pub fn get(&mut self, key: &str, ttl: Duration) -> Option<V> {
        let (value, stored, _) = self.entries.get(key)?;
        if stored.elapsed() >= ttl {
            return None;
        }
        let value = value.clone();
        self.touch(key);
        Some(value)
    }

    /// Stores `value` under `key` (a use), evicting the least recently used entry when full.
    pub fn put(&mut self, key: &str, value: V) {
        if let Some(slot) = self.entries.get_mut(key) {
            (slot.0, slot.1) = (value, Instant::now());
            self.touch(key);
            return;
        }
        if self.entries.len() >= self.capacity
            && let Some((_, oldest)) = self.order.pop_first()
        {
            self.entries.remove(&oldest);
        }
        self.tick += 1;
        self.entries
            .insert(key.to_string(), (value, Instant::now(), self.tick));
        self.order.insert(self.tick, key.to_string());
    }

    /// Whether `key` is held (fresh or not), without counting a use.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Labels read from the API server, cached for [`CACHE_TTL`].
pub struct KubeNamespaces {
    api: Api<Namespace>,
    // Never held across an await (std Mutex is fine here).
    cache: Mutex<LruCache<Labels>>,
    in_flight: SingleFlight<String, Result<Labels, NamespaceError>>,
}

impl KubeNamespaces {
    /// Reads namespaces through `client` (needs `get` on namespaces).
    pub fn new(client: kube::Client) -> Self {
        Self::with_capacity(client, MAX_CACHED)
    }

    /// [`KubeNamespaces::new`] caching at most `capacity` namespaces.
    pub fn with_capacity(client: kube::Client, capacity: usize) -> Self {
        Self {
            api: Api::all(client),
            cache: Mutex::new(LruCache::new(capacity)),
            in_flight: SingleFlight::new(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LruCache<Labels>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn fetch(&self, namespace: &str) -> Result<Labels, NamespaceError> {
        let meta = tokio::time::timeout(LOOKUP_TIMEOUT, self.api.get_metadata_opt(namespace))
            .await
            .map_err(|_| NamespaceError::Timeout(namespace.to_string()))?
            .map_err(|source| NamespaceError::Kube {
                namespace: namespace.to_string(),
                source: Arc::new(source),
            })?;
        let labels = meta.and_then(|m| m.metadata.labels).unwrap_or_default();
        // Cached before the shared result is handed out, so a caller arriving after the
        // in-flight entry is gone finds it.
        self.cache().put(namespace, labels.clone());
        Ok(labels)
    }
}

#[async_trait::async_trait]
impl NamespaceLabels for KubeNamespaces {
    async fn labels(&self, namespace: &str) -> Result<Labels, NamespaceError> {
        if !is_dns1123_label(namespace) {
            return Err(NamespaceError::InvalidName(shown(namespace)));
        }
        if let Some(labels) = self.cache().get(namespace, CACHE_TTL) {
            return Ok(labels);
        }
        self.in_flight
            .run(namespace.to_string(), || self.fetch(namespace))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::json;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// Answers the next request, which must be a GET of `namespace`, with its labels.
    async fn answer(handle: &mut Handle, namespace: &str) {
        let (req, send) = handle.next_request().await.expect("a GET");
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().path(), format!("/api/v1/namespaces/{namespace}"));
        let body = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": namespace, "labels": {"name": namespace}}});
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    }

    #[test]
    fn namespace_names_are_dns1123_labels() {
        for good in ["a", "shop", "team-1", "0", "a".repeat(63).as_str()] {
            assert!(is_dns1123_label(good), "{good}");
        }
        for bad in [
            "",
            "../x?y",
            "a/b",
            "Shop",
            "-a",
            "a-",
            "a.b",
            "a b",
            "ns%2f",
            "é",
            "a".repeat(64).as_str(),
        ] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
        assert_eq!(shown(&"x".repeat(10_000)).len(), MAX_NAMESPACE_LEN + 1);
    }

    #[tokio::test]
    async fn invalid_names_never_reach_the_api_server() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let namespaces = Arc::new(KubeNamespaces::new(kube::Client::new(service, "default")));
        for bad in ["../x?y", "kube-system/secrets", "", "A"] {
            assert!(matches!(
                namespaces.labels(bad).await,
                Err(NamespaceError::InvalidName(_))
            ));
        }
        assert!(matches!(
            StaticNamespaces::default().labels("../x?y").await,
            Err(NamespaceError::InvalidName(_))
        ));
        // The first request the API server sees is the valid lookup that follows.
        let valid = {
            let namespaces = namespaces.clone();
            tokio::spawn(async move { namespaces.labels("shop").await })
        };
        answer(&mut handle, "shop").await;
        assert_eq!(valid.await.unwrap().unwrap()["name"], "shop");
        drop(namespaces);
        assert!(handle.next_request().await.is_none(), "no other request");
    }

    #[tokio::test]
    async fn concurrent_lookups_of_one_namespace_make_one_call() {
        const N: usize = 10;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let namespaces = Arc::new(KubeNamespaces::new(kube::Client::new(service, "default")));
        let lookups: Vec<_> = (0..N)
            .map(|_| {
                let namespaces = namespaces.clone();
                tokio::spawn(async move { namespaces.labels("shop").await })
            })
            .collect();
        let (req, send) = handle.next_request().await.expect("one GET");
        let key = "shop".to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while namespaces.in_flight.waiters(&key) < N {
            assert!(std::time::Instant::now() < deadline, "lookups never joined");
            tokio::task::yield_now().await;
        }
        assert_eq!(req.uri().path(), "/api/v1/namespaces/shop");
        let body = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "shop", "labels": {"palisade.dev/inject": "enabled"}}});
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
        for lookup in lookups {
            assert_eq!(
                lookup.await.unwrap().unwrap()["palisade.dev/inject"],
                "enabled"
            );
        }
        assert!(namespaces.in_flight.is_empty());
        drop(namespaces);
        assert!(handle.next_request().await.is_none(), "exactly one GET");
    }

    #[test]
    fn ten_thousand_distinct_names_do_not_clear_a_hot_entry() {
        let mut cache = LruCache::new(MAX_CACHED);
        cache.put("hot", 1);
        cache.put("cold", 2);
        for i in 0..MAX_CACHED {
            cache.put(&format!("ns-{i}"), 0);
            if i % 1000 == 0 {
                assert_eq!(cache.get("hot", CACHE_TTL), Some(1), "after {i}");
            }
        }
        assert_eq!(cache.len(), MAX_CACHED);
        assert_eq!(cache.get("hot", CACHE_TTL), Some(1));
        assert!(
            !cache.contains("cold"),
            "the least recently used went first"
        );
        assert!(cache.contains(&format!("ns-{}", MAX_CACHED - 1)));
    }

    #[tokio::test]
    async fn a_full_cache_evicts_the_least_recently_used_namespace() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let namespaces = Arc::new(KubeNamespaces::with_capacity(
            kube::Client::new(service, "default"),
            2,
        ));
        // Lookups and the GETs the API server must see, in order (None: from the cache).
        let script = [
            ("hot", true),
            ("a", true),
            ("hot", false),
            ("b", true), // evicts a, not hot
            ("hot", false),
            ("a", true), // evicts b
            ("hot", false),
        ];
        for (namespace, fetched) in script {
            let lookup = {
                let namespaces = namespaces.clone();
                tokio::spawn(async move { namespaces.labels(namespace).await })
            };
            if fetched {
                answer(&mut handle, namespace).await;
            }
            assert_eq!(lookup.await.unwrap().unwrap()["name"], namespace);
        }
        drop(namespaces);
        assert!(handle.next_request().await.is_none(), "no other request");
    }

    #[tokio::test]
    async fn one_get_per_namespace_then_cached_and_missing_is_empty() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let namespaces = KubeNamespaces::new(kube::Client::new(service, "default"));
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("GET shop");
            assert_eq!(req.method(), Method::GET);
            assert_eq!(req.uri().path(), "/api/v1/namespaces/shop");
            let body = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": "shop", "labels": {"palisade.dev/inject": "enabled"}}});
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
            let (req, send) = handle.next_request().await.expect("GET gone");
            assert_eq!(req.uri().path(), "/api/v1/namespaces/gone");
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "not found"});
            send.send_response(
                Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Body::from(serde_json::to_vec(&status).unwrap()))
                    .unwrap(),
            );
        });
        let first = namespaces.labels("shop").await.unwrap();
        assert_eq!(first["palisade.dev/inject"], "enabled");
        // Answered from the cache: the mock would fail the test on a second GET of shop.
        assert_eq!(namespaces.labels("shop").await.unwrap(), first);
        assert!(namespaces.labels("gone").await.unwrap().is_empty());
        server.await.unwrap();
    }
}
