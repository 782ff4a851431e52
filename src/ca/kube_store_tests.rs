//! tower-test scenarios: each asserts the exact requests and feeds back API-server answers.

use super::*;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn mock() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, code: StatusCode, body: Value) {
    let bytes = serde_json::to_vec(&body).unwrap();
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(bytes))
            .unwrap(),
    );
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
           "message": reason, "code": code})
}

fn secret_json(key: &str, cert: &str, rv: &str) -> Value {
    use base64::Engine as _;
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": "palisade-ca", "namespace": "palisade-system", "resourceVersion": rv},
           "type": "palisade.dev/ca-root",
           "data": {"ca-key.pem": b(key), "ca-cert.pem": b(cert)}})
}

const PATH: &str = "/api/v1/namespaces/palisade-system/secrets";

async fn expect_get(handle: &mut Handle, answer: (StatusCode, Value)) {
    let (req, send) = handle.next_request().await.expect("GET expected");
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri().path(), format!("{PATH}/palisade-ca"));
    respond(send, answer.0, answer.1);
}

async fn expect_create(handle: &mut Handle, answer: (StatusCode, Value)) -> Value {
    let (req, send) = handle.next_request().await.expect("POST expected");
    assert_eq!(req.method(), Method::POST);
    assert_eq!(req.uri().path(), PATH);
    let body = req.into_body().collect_bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    respond(send, answer.0, answer.1);
    body
}

fn stored(n: u8) -> StoredCa {
    StoredCa {
        key_pem: format!("key{n}"),
        cert_pem: format!("cert{n}"),
        version: None,
    }
}

#[tokio::test]
async fn create_sends_the_secret_and_returns_it() {
    let (client, mut handle) = mock();
    let store = KubeSecretStore::new(client, "palisade-system");
    let server = tokio::spawn(async move {
        let body = expect_create(
            &mut handle,
            (StatusCode::CREATED, secret_json("key1", "cert1", "7")),
        )
        .await;
        assert_eq!(body["metadata"]["name"], "palisade-ca");
        assert_eq!(body["data"]["ca-cert.pem"], "Y2VydDE=");
        assert_eq!(body["data"]["ca-key.pem"], "a2V5MQ==");
        assert!(body["metadata"].get("resourceVersion").is_none());
    });
    let got = store.create_if_absent(&stored(1)).await.unwrap();
    server.await.unwrap();
    assert_eq!(
        got,
        StoredCa {
            version: Some("7".into()),
            ..stored(1)
        }
    );
}

/// Two replicas start at once: both see no Secret, both POST; the API server accepts the first
/// and answers 409 to the second, which reads the winner's root back. One root in the end.
#[tokio::test]
async fn two_racing_stores_end_with_one_root() {
    let (client, mut handle) = mock();
    let a = KubeSecretStore::new(client.clone(), "palisade-system");
    let b = KubeSecretStore::new(client, "palisade-system");
    let server = tokio::spawn(async move {
        let not_found = || (StatusCode::NOT_FOUND, status(404, "NotFound"));
        expect_get(&mut handle, not_found()).await;
        expect_get(&mut handle, not_found()).await;
        expect_create(
            &mut handle,
            (StatusCode::CREATED, secret_json("key1", "cert1", "1")),
        )
        .await;
        let body = expect_create(
            &mut handle,
            (StatusCode::CONFLICT, status(409, "AlreadyExists")),
        )
        .await;
        assert_eq!(
            body["data"]["ca-cert.pem"], "Y2VydDI=",
            "B tried to store its own root"
        );
        expect_get(
            &mut handle,
            (StatusCode::OK, secret_json("key1", "cert1", "1")),
        )
        .await;
    });
    // Interleave deterministically: both load, then A creates, then B creates.
    assert_eq!(a.load().await.unwrap(), None);
    assert_eq!(b.load().await.unwrap(), None);
    let won = a.create_if_absent(&stored(1)).await.unwrap();
    let lost = b.create_if_absent(&stored(2)).await.unwrap();
    server.await.unwrap();
    assert_eq!(won, lost);
    assert_eq!(lost.cert_pem, "cert1");
}

#[tokio::test]
async fn replace_uses_resource_version_and_rereads_on_conflict() {
    let (client, mut handle) = mock();
    let store = KubeSecretStore::new(client, "palisade-system");
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), Method::PUT);
        assert_eq!(req.uri().path(), format!("{PATH}/palisade-ca"));
        let body: Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["metadata"]["resourceVersion"], "5");
        respond(send, StatusCode::CONFLICT, status(409, "Conflict"));
        expect_get(
            &mut handle,
            (StatusCode::OK, secret_json("key1", "other", "6")),
        )
        .await;
    });
    let current = StoredCa {
        version: Some("5".into()),
        ..stored(1)
    };
    let new = StoredCa {
        cert_pem: "renewed".into(),
        ..current.clone()
    };
    let got = store.replace(&current, &new).await.unwrap();
    server.await.unwrap();
    assert_eq!(got.cert_pem, "other");
}

#[tokio::test]
async fn api_errors_and_malformed_secrets_are_errors() {
    let (client, mut handle) = mock();
    let store = KubeSecretStore::new(client, "palisade-system");
    let server = tokio::spawn(async move {
        expect_get(
            &mut handle,
            (StatusCode::FORBIDDEN, status(403, "Forbidden")),
        )
        .await;
        let mut partial = secret_json("k", "c", "1");
        partial["data"]
            .as_object_mut()
            .unwrap()
            .remove("ca-key.pem");
        expect_get(&mut handle, (StatusCode::OK, partial)).await;
        let huge = "x".repeat(MAX_VALUE_BYTES + 1);
        expect_get(&mut handle, (StatusCode::OK, secret_json("k", &huge, "1"))).await;
    });
    assert!(matches!(store.load().await, Err(StoreError::Kube { .. })));
    assert!(matches!(store.load().await, Err(StoreError::Malformed(_))));
    let oversize = store.load().await;
    assert!(matches!(&oversize, Err(StoreError::Malformed(m)) if m.contains("oversize")));
    server.await.unwrap();
}

#[tokio::test]
async fn plugin_secret_is_read_from_cacerts() {
    let (client, mut handle) = mock();
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.uri().path(), format!("{PATH}/cacerts"));
        respond(send, StatusCode::NOT_FOUND, status(404, "NotFound"));
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().path(), format!("{PATH}/cacerts"));
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "cacerts", "namespace": "palisade-system"},
            "data": {"ca-cert.pem": "Y2VydA==", "ca-key.pem": "a2V5"}});
        respond(send, StatusCode::OK, secret);
    });
    let absent = crate::ca::plugin::read_secret(client.clone(), "palisade-system")
        .await
        .unwrap();
    assert!(absent.is_none());
    let files = crate::ca::plugin::read_secret(client, "palisade-system")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        files.get("ca-cert.pem").map(Vec::as_slice),
        Some(&b"cert"[..])
    );
    assert_eq!(
        files.get("ca-key.pem").map(Vec::as_slice),
        Some(&b"key"[..])
    );
    server.await.unwrap();
}
