//! The request path without a network: deadlines and namespace lookup failures.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::*;
use crate::webhook::namespaces::{Labels, NamespaceError};

struct Slow;

#[async_trait::async_trait]
impl NamespaceLabels for Slow {
    async fn labels(&self, _: &str) -> Result<Labels, NamespaceError> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(BTreeMap::new())
    }
}

struct Broken;

#[async_trait::async_trait]
impl NamespaceLabels for Broken {
    async fn labels(&self, namespace: &str) -> Result<Labels, NamespaceError> {
        Err(NamespaceError::Timeout(namespace.to_string()))
    }
}

fn injector(namespaces: Arc<dyn NamespaceLabels>) -> Arc<Injector> {
    Arc::new(Injector {
        config: Arc::new(InjectionConfig::default()),
        namespaces,
        metrics: WebhookMetrics::default(),
    })
}

fn review() -> Vec<u8> {
    serde_json::to_vec(
        &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "operation": "CREATE", "namespace": "shop",
                    "object": {"spec": {"containers": [{"name": "app"}]}}}}),
    )
    .unwrap()
}

#[tokio::test]
async fn a_stuck_request_is_answered_before_the_api_server_gives_up() {
    let injector = injector(Arc::new(Slow));
    let metrics = injector.metrics.clone();
    let app = router_with_deadline(injector, Duration::from_millis(50));
    let req = Request::post("/inject").body(Body::from(review())).unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("timed out"));
    assert_eq!(
        metrics
            .injections
            .get_or_create(&crate::webhook::metrics::InjectionLabels {
                result: "error",
                reason: ""
            })
            .get(),
        1
    );
}

#[tokio::test]
async fn a_failed_namespace_lookup_denies_with_a_reason() {
    let injector = injector(Arc::new(Broken));
    let out = injector.review(&review()).await.unwrap();
    let out: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(out["response"]["allowed"], false);
    let message = out["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("namespace shop"), "{message}");
}

#[test]
fn default_deadline_is_well_under_the_api_servers() {
    assert!(REQUEST_TIMEOUT <= Duration::from_secs(5));
}
