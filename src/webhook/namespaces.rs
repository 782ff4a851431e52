//! Namespace labels for the injection decision. The API server does not send them with the
//! pod, so in a cluster they are read from the API (cached briefly: one GET per namespace per
//! [`CACHE_TTL`], not per pod); in standalone mode they come from the injection config.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;

/// How long a namespace's labels are reused. Label changes only matter for pods created
/// afterwards (existing pods must be restarted anyway), so a short delay is harmless.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Most namespaces cached; beyond that the cache is cleared (bounded memory).
pub const MAX_CACHED: usize = 10_000;
/// A lookup that takes longer fails, well inside the webhook's own deadline.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Labels type.
pub type Labels = BTreeMap<String, String>;

/// Why a namespace's labels are unknown.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("reading namespace {namespace}: {source}")]
    Kube {
        namespace: String,
        source: kube::Error,
    },
    #[error("reading namespace {0}: timed out")]
    Timeout(String),
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
        Ok(self.0.get(namespace).cloned().unwrap_or_default())
    }
}

/// Labels read from the API server, cached for [`CACHE_TTL`].
pub struct KubeNamespaces {
    api: Api<Namespace>,
    cache: Mutex<HashMap<String, (Labels, Instant)>>,
}

impl KubeNamespaces {
    /// Reads namespaces through `client` (needs `get` on namespaces).
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: Api::all(client),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, namespace: &str) -> Option<Labels> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(namespace)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(labels, _)| labels.clone())
    }
}

#[async_trait::async_trait]
impl NamespaceLabels for KubeNamespaces {
    async fn labels(&self, namespace: &str) -> Result<Labels, NamespaceError> {
        if let Some(labels) = self.cached(namespace) {
            return Ok(labels);
        }
        let meta = tokio::time::timeout(LOOKUP_TIMEOUT, self.api.get_metadata_opt(namespace))
            .await
            .map_err(|_| NamespaceError::Timeout(namespace.to_string()))?
            .map_err(|source| NamespaceError::Kube {
                namespace: namespace.to_string(),
                source,
            })?;
        let labels = meta.and_then(|m| m.metadata.labels).unwrap_or_default();
        // The guard is never held across an await (std Mutex is fine here).
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(namespace.to_string(), (labels.clone(), Instant::now()));
        Ok(labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::json;

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
