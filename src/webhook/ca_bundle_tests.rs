//! tower-test scenarios: each asserts the exact requests and feeds back API-server answers.

use super::*;
use base64::Engine as _;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const PATH: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/palisade-sidecar-injector";
const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn mock() -> (CaBundleSync, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (
        CaBundleSync::new(kube::Client::new(service, "default")),
        handle,
    )
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, code: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn configuration(bundles: &[Option<&str>]) -> Value {
    let webhooks: Vec<Value> = bundles
        .iter()
        .enumerate()
        .map(|(i, bundle)| {
            let mut client_config = json!({"service": {"name": "palisade",
                "namespace": "palisade-system", "path": "/inject", "port": 443}});
            if let Some(b) = bundle {
                client_config["caBundle"] = json!(b64(b));
            }
            json!({"name": format!("inject{i}.sidecar.palisade.dev"),
                   "clientConfig": client_config, "sideEffects": "None",
                   "admissionReviewVersions": ["v1"], "failurePolicy": "Fail",
                   "timeoutSeconds": 5})
        })
        .collect();
    json!({"apiVersion": "admissionregistration.k8s.io/v1",
           "kind": "MutatingWebhookConfiguration",
           "metadata": {"name": "palisade-sidecar-injector", "resourceVersion": "41"},
           "webhooks": webhooks})
}

async fn expect_get(handle: &mut Handle, code: StatusCode, body: Value) {
    let (req, send) = handle.next_request().await.expect("GET expected");
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri().path(), PATH);
    respond(send, code, &body);
}

#[tokio::test]
async fn equal_bundle_is_one_get_and_no_patch() {
    let (sync, mut handle) = mock();
    let api = tokio::spawn(async move {
        expect_get(&mut handle, StatusCode::OK, configuration(&[Some(PEM)])).await;
        // No further request may arrive.
        assert!(handle.next_request().await.is_none());
    });
    assert_eq!(sync.reconcile(PEM).await.unwrap(), Outcome::Unchanged);
    drop(sync);
    api.await.unwrap();
}

#[tokio::test]
async fn different_bundles_are_patched_in_place() {
    let (sync, mut handle) = mock();
    let api = tokio::spawn(async move {
        expect_get(
            &mut handle,
            StatusCode::OK,
            configuration(&[Some("old root"), Some(PEM), None]),
        )
        .await;
        let (req, send) = handle.next_request().await.expect("PATCH expected");
        assert_eq!(req.method(), Method::PATCH);
        assert_eq!(req.uri().path(), PATH);
        assert!(
            req.uri()
                .query()
                .unwrap_or_default()
                .contains("fieldManager=palisade-controller")
        );
        assert_eq!(req.headers()["content-type"], "application/json-patch+json");
        let body = req.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!([
                {"op": "test", "path": "/webhooks/0/name", "value": "inject0.sidecar.palisade.dev"},
                {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": b64(PEM)},
                {"op": "test", "path": "/webhooks/2/name", "value": "inject2.sidecar.palisade.dev"},
                {"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": b64(PEM)},
            ])
        );
        respond(
            send,
            StatusCode::OK,
            &configuration(&[Some(PEM), Some(PEM), Some(PEM)]),
        );
    });
    assert_eq!(sync.reconcile(PEM).await.unwrap(), Outcome::Updated(2));
    api.await.unwrap();
}

#[tokio::test]
async fn missing_configuration_is_not_an_error() {
    let (sync, mut handle) = mock();
    let api = tokio::spawn(async move {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "not found"});
        expect_get(&mut handle, StatusCode::NOT_FOUND, status).await;
    });
    assert_eq!(sync.reconcile(PEM).await.unwrap(), Outcome::NotFound);
    api.await.unwrap();
}

#[tokio::test]
async fn a_failed_patch_is_reported() {
    let (sync, mut handle) = mock();
    let api = tokio::spawn(async move {
        expect_get(&mut handle, StatusCode::OK, configuration(&[None])).await;
        let (req, send) = handle.next_request().await.expect("PATCH expected");
        assert_eq!(req.method(), Method::PATCH);
        // The `test` op failed: someone reordered the webhooks meanwhile.
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Invalid", "code": 422, "message": "testing value /webhooks/0/name failed"});
        respond(send, StatusCode::UNPROCESSABLE_ENTITY, &status);
    });
    assert!(sync.reconcile(PEM).await.is_err());
    api.await.unwrap();
}

#[tokio::test]
async fn spawned_loop_follows_bundle_changes() {
    let (sync, mut handle) = mock();
    let first = crate::ca::TrustBundle::default();
    let (tx, rx) = watch::channel(first);
    let task = sync.spawn(rx);
    // Start: the (empty) bundle is already what the configuration holds.
    expect_get(&mut handle, StatusCode::OK, configuration(&[Some("")])).await;
    // A change triggers a check right away (no waiting for the resync).
    tx.send_modify(|_| {});
    expect_get(&mut handle, StatusCode::OK, configuration(&[Some("")])).await;
    task.abort();
}

/// Fails if a request arrives within `for_` (paused time: no real waiting).
async fn expect_silence(handle: &mut Handle, for_: std::time::Duration) {
    if let Ok(request) = tokio::time::timeout(for_, handle.next_request()).await {
        let what = request.map(|(req, _)| format!("{} {}", req.method(), req.uri()));
        panic!("no request expected while not the leader, got {what:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn gated_loop_checks_only_while_leader() {
    let (sync, mut handle) = mock();
    let (bundle_tx, bundles) = watch::channel(crate::ca::TrustBundle::default());
    let (leader_tx, leader) = watch::channel(false);
    let task = sync.spawn_while_leader(bundles, leader);
    let quiet = RESYNC * 3;
    // Not the leader: neither time (resyncs) nor bundle changes make it touch the API.
    expect_silence(&mut handle, quiet).await;
    bundle_tx.send_modify(|_| {});
    expect_silence(&mut handle, quiet).await;
    // Leader: a check right away, then the loop as usual (a resync).
    leader_tx.send_replace(true);
    expect_get(&mut handle, StatusCode::OK, configuration(&[Some("")])).await;
    expect_get(&mut handle, StatusCode::OK, configuration(&[Some("")])).await;
    // Lost: silent again, even on a bundle change.
    leader_tx.send_replace(false);
    bundle_tx.send_modify(|_| {});
    expect_silence(&mut handle, quiet).await;
    // Regained: checks at once.
    leader_tx.send_replace(true);
    expect_get(&mut handle, StatusCode::OK, configuration(&[Some("")])).await;
    // The elector ending (sender dropped) ends the loop.
    drop(leader_tx);
    tokio::time::timeout(RESYNC, task)
        .await
        .expect("loop ends with the elector")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn losing_leadership_mid_check_drops_the_write() {
    let (sync, mut handle) = mock();
    let (_bundle_tx, bundles) = watch::channel(crate::ca::TrustBundle::default());
    let (leader_tx, leader) = watch::channel(true);
    let _task = sync.spawn_while_leader(bundles, leader);
    // The GET is in flight when leadership is lost; its answer (a stale bundle) must not
    // lead to a PATCH.
    let (req, send) = handle.next_request().await.expect("GET expected");
    assert_eq!(req.method(), Method::GET);
    leader_tx.send_replace(false);
    tokio::task::yield_now().await;
    respond(send, StatusCode::OK, &configuration(&[Some("old root")]));
    expect_silence(&mut handle, RESYNC * 3).await;
}
