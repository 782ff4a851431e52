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

mod never_panics {
    use super::*;
    use crate::webhook::namespaces::StaticNamespaces;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-zA-Z0-9/._-]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("metadata".to_string()),
                        Just("spec".to_string()),
                        Just("containers".to_string()),
                        Just("initContainers".to_string()),
                        Just("labels".to_string()),
                        Just("annotations".to_string()),
                        Just("name".to_string()),
                        Just("livenessProbe".to_string()),
                        Just("httpGet".to_string()),
                        Just("port".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    fn enabled() -> Arc<Injector> {
        let labels = BTreeMap::from([("palisade.dev/inject".into(), "enabled".into())]);
        injector(Arc::new(StaticNamespaces(BTreeMap::from([(
            "shop".into(),
            labels,
        )]))))
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_are_a_400_not_a_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let out = runtime().block_on(enabled().review(&body));
            prop_assert!(out.is_err() || serde_json::from_slice::<Value>(&out.unwrap()).is_ok());
        }

        #[test]
        fn arbitrary_objects_get_an_answer(object in json_value()) {
            let body = serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                            "operation": "CREATE", "namespace": "shop", "object": object}}))
                .unwrap();
            let out = runtime().block_on(enabled().review(&body)).unwrap();
            let out: Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(&out["response"]["uid"], "u");
            prop_assert!(out["response"]["allowed"].is_boolean());
        }
    }
}

/// Counts lookups: a namespace that is not a DNS-1123 label must be denied before any.
struct Counting(std::sync::atomic::AtomicUsize);

#[async_trait::async_trait]
impl NamespaceLabels for Counting {
    async fn labels(&self, _: &str) -> Result<Labels, NamespaceError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(BTreeMap::new())
    }
}

#[tokio::test]
async fn an_invalid_namespace_is_denied_before_any_lookup() {
    let lookups = Arc::new(Counting(Default::default()));
    let injector = injector(lookups.clone());
    let mut body: Value = serde_json::from_slice(&review()).unwrap();
    body["request"]["namespace"] = json!("../x?y");
    let answer: Value = serde_json::from_slice(
        &injector
            .review(&serde_json::to_vec(&body).unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["status"]["code"], 400);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("not a valid namespace name"), "{message}");
    assert_eq!(lookups.0.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn the_deadline_ends_before_the_api_servers() {
    let limit = Duration::from_secs(5);
    for (query, want_ms) in [
        (None, 5000),
        (Some("timeout=10s"), 5000),
        (Some("timeout=5s"), 4500),
        (Some("dryRun=All&timeout=3s"), 2500),
        (Some("timeout=1s"), 500),
        (Some("timeout=0.2s"), 500),
        (Some("timeout=2.5s"), 2000),
        (Some("timeout=abc"), 5000),
        (Some("timeout=5m"), 5000),
        (Some("timeout=-1s"), 5000),
        (Some("timeout=NaNs"), 5000),
        (Some("timeout=1e300s"), 5000),
        (Some("other=1"), 5000),
    ] {
        assert_eq!(
            effective_deadline(query, limit),
            Duration::from_millis(want_ms),
            "{query:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_api_servers_timeout_shortens_the_deadline() {
    // The router's own limit is an hour; the API server says it waits 2 s: answer by 1.5 s.
    let app = router_with_deadline(injector(Arc::new(Slow)), Duration::from_secs(3600));
    let started = tokio::time::Instant::now();
    let req = Request::post("/inject?timeout=2s")
        .body(Body::from(review()))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.elapsed(), Duration::from_millis(1500));
}
