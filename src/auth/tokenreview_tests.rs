//! tower-test scenarios against a mocked API server: exact requests, each kind of answer,
//! caching, single-flight and load shedding.

use std::sync::Arc;

use super::*;
use crate::auth::cache::sha256;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn setup(config: TokenReviewConfig) -> (Arc<TokenReviewAuthenticator>, Handle, AuthMetrics) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let metrics = AuthMetrics::default();
    (
        Arc::new(TokenReviewAuthenticator::new(
            client,
            config,
            metrics.clone(),
        )),
        handle,
        metrics,
    )
}

fn review_status(status: Value) -> Value {
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
           "metadata": {}, "spec": {}, "status": status})
}

fn authenticated(username: &str) -> Value {
    review_status(
        json!({"authenticated": true, "user": {"username": username},
                         "audiences": ["palisade-ca"]}),
    )
}

/// Takes the next request, checks it is a TokenReview for `token` with the default audience,
/// and answers `code` + `body`.
async fn serve_one(handle: &mut Handle, token: &str, code: StatusCode, body: Value) {
    let (req, send) = handle.next_request().await.expect("a TokenReview request");
    assert_eq!(req.method(), Method::POST);
    assert_eq!(
        req.uri().path(),
        "/apis/authentication.k8s.io/v1/tokenreviews"
    );
    let sent: Value =
        serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
    assert_eq!(sent["kind"], "TokenReview");
    assert_eq!(sent["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(
        sent["spec"],
        json!({"token": token, "audiences": ["palisade-ca"]})
    );
    let bytes = serde_json::to_vec(&body).unwrap();
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(bytes))
            .unwrap(),
    );
}

/// Proves that no further request reached the API server, by an explicit signal rather than
/// a wait: dropping the authenticator drops the last client of the mock, which ends its stream
/// once everything sent before is taken. The deadline only turns a hang into a failure.
async fn no_more_requests(handle: &mut Handle, auth: Arc<TokenReviewAuthenticator>) {
    drop(auth);
    let next = tokio::time::timeout(Duration::from_secs(60), handle.next_request())
        .await
        .expect("the authenticator was dropped, so the mock's stream ends");
    if let Some((req, _)) = next {
        panic!("unexpected extra request: {} {}", req.method(), req.uri());
    }
}

#[tokio::test]
async fn authenticated_service_account_then_cache_hit() {
    let (auth, mut handle, metrics) = setup(TokenReviewConfig::default());
    let server = tokio::spawn(async move {
        serve_one(
            &mut handle,
            "tok-1",
            StatusCode::CREATED,
            authenticated("system:serviceaccount:default:web"),
        )
        .await;
        handle
    });
    let want = Identity::new("default", "web").unwrap();
    assert_eq!(auth.authenticate("tok-1").await.unwrap(), want);
    assert_eq!(
        auth.authenticate("tok-1").await.unwrap(),
        want,
        "second call from the cache"
    );
    let mut handle = server.await.unwrap();
    no_more_requests(&mut handle, auth).await;
    assert_eq!(metrics.cache_hits.get(), 1);
}

#[tokio::test]
async fn unauthenticated_answers_are_unauthenticated_and_not_cached() {
    let (auth, mut handle, _) = setup(TokenReviewConfig::default());
    let server = tokio::spawn(async move {
        let no = review_status(json!({"authenticated": false, "error": "token expired"}));
        serve_one(&mut handle, "bad", StatusCode::CREATED, no.clone()).await;
        serve_one(&mut handle, "bad", StatusCode::CREATED, no).await;
        serve_one(
            &mut handle,
            "user",
            StatusCode::CREATED,
            authenticated("alice@example.com"),
        )
        .await;
        let wrong_aud = review_status(json!({"authenticated": true,
            "user": {"username": "system:serviceaccount:a:b"}, "audiences": ["kubernetes"]}));
        serve_one(&mut handle, "aud", StatusCode::CREATED, wrong_aud).await;
        let no_aud = review_status(json!({"authenticated": true,
            "user": {"username": "system:serviceaccount:a:b"}}));
        serve_one(&mut handle, "noaud", StatusCode::CREATED, no_aud).await;
    });
    for token in ["bad", "bad", "user", "aud", "noaud"] {
        match auth.authenticate(token).await {
            Err(AuthError::Unauthenticated(_)) => {}
            other => panic!("{token}: {other:?}"),
        }
    }
    server.await.unwrap();
}

#[tokio::test]
async fn api_errors_fail_closed_as_unavailable() {
    let (auth, mut handle, metrics) = setup(TokenReviewConfig::default());
    let server = tokio::spawn(async move {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "message": "etcd down", "reason": "InternalError", "code": 500});
        serve_one(&mut handle, "t", StatusCode::INTERNAL_SERVER_ERROR, status).await;
        let forbidden = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "message": "no RBAC", "reason": "Forbidden", "code": 403});
        serve_one(&mut handle, "t", StatusCode::FORBIDDEN, forbidden).await;
        // A transport failure: the request is dropped without an answer.
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_error(std::io::Error::other("connection reset"));
    });
    for _ in 0..3 {
        assert!(matches!(
            auth.authenticate("t").await,
            Err(AuthError::Unavailable(_))
        ));
    }
    server.await.unwrap();
    let errors = crate::metrics::ResultLabel {
        result: "error".into(),
    };
    assert_eq!(metrics.token_reviews.get_or_create(&errors).get(), 3);
}

#[tokio::test]
async fn concurrent_identical_tokens_share_one_review() {
    const N: usize = 20;
    let (auth, mut handle, _) = setup(TokenReviewConfig::default());
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let auth = auth.clone();
            tokio::spawn(async move { auth.authenticate("same-token").await })
        })
        .collect();
    let (req, send) = handle.next_request().await.unwrap();
    // Wait (with a deadline) until every caller has joined the in-flight review.
    let key = sha256("same-token");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let joined = auth.in_flight.waiters(&key);
        if joined == N {
            break;
        }
        assert!(Instant::now() < deadline, "only {joined} joined");
        tokio::task::yield_now().await;
    }
    drop(req);
    let body = serde_json::to_vec(&authenticated("system:serviceaccount:ns:sa")).unwrap();
    send.send_response(
        Response::builder()
            .status(201)
            .body(Body::from(body))
            .unwrap(),
    );
    for t in tasks {
        assert_eq!(
            t.await.unwrap().unwrap(),
            Identity::new("ns", "sa").unwrap()
        );
    }
    assert!(auth.in_flight.is_empty());
    no_more_requests(&mut handle, auth).await;
}

/// A caller cancelled while the API server stalls (client reset, gRPC deadline) must not leave
/// its in-flight entry behind: one entry per distinct token, forever, was the leak.
#[tokio::test]
async fn a_cancelled_review_leaves_nothing_in_flight() {
    let (auth, mut handle, _) = setup(TokenReviewConfig::default());
    for token in ["stalled-1", "stalled-2"] {
        let caller = {
            let auth = auth.clone();
            tokio::spawn(async move { auth.authenticate(token).await })
        };
        // The review reached the API server, which never answers.
        let (_req, _never_answered) = handle.next_request().await.expect("a TokenReview");
        assert_eq!(auth.in_flight.len(), 1);
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        assert!(auth.in_flight.is_empty(), "{token} left behind");
    }
    // Dropping the request future in place (what a deadline around the call does) is the same.
    let mut call = Box::pin(auth.authenticate("stalled-3"));
    let (_req, _never_answered) = tokio::select! {
        _ = &mut call => panic!("answered without the API server"),
        request = handle.next_request() => request.expect("a TokenReview"),
    };
    assert_eq!(auth.in_flight.len(), 1);
    drop(call);
    assert!(auth.in_flight.is_empty());
}

#[tokio::test]
async fn saturation_sheds_load_instead_of_queueing() {
    let config = TokenReviewConfig {
        max_in_flight: 1,
        max_wait: Duration::from_millis(20),
        ..Default::default()
    };
    let (auth, mut handle, _) = setup(config);
    let first = {
        let auth = auth.clone();
        tokio::spawn(async move { auth.authenticate("slow").await })
    };
    // The first review is now in flight and unanswered.
    let (_req, send) = handle.next_request().await.unwrap();
    assert_eq!(auth.authenticate("other").await, Err(AuthError::Exhausted));
    let body = serde_json::to_vec(&authenticated("system:serviceaccount:ns:sa")).unwrap();
    send.send_response(
        Response::builder()
            .status(201)
            .body(Body::from(body))
            .unwrap(),
    );
    assert!(first.await.unwrap().is_ok());
}

#[tokio::test]
async fn oversize_and_empty_tokens_never_reach_the_api_server() {
    let (auth, mut handle, _) = setup(TokenReviewConfig::default());
    assert!(auth.authenticate("").await.is_err());
    let huge = "a".repeat(crate::auth::MAX_TOKEN_BYTES + 1);
    assert!(matches!(
        auth.authenticate(&huge).await,
        Err(AuthError::Unauthenticated(_))
    ));
    no_more_requests(&mut handle, auth).await;
}
