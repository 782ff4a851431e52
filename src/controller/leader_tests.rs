//! The election rule as tables, then tower-test scenarios that assert the exact Lease requests
//! and feed back API-server answers. Timer-driven scenarios run on paused time.

use super::*;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::oneshot;

// ---- pure rule -------------------------------------------------------------------------------

const ME: &str = "palisade-0_abcd";

fn record(holder: Option<&str>, renew_secs: i64) -> LeaseRecord {
    LeaseRecord {
        holder: holder.map(str::to_owned),
        renew_time: Timestamp::from_second(renew_secs).ok(),
        lease_duration: LEASE_DURATION,
        transitions: 3,
    }
}

#[test]
fn decide_table() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let short = LeaseRecord {
        lease_duration: s(5),
        ..record(Some("other"), 100)
    };
    let cases: &[(&str, Option<LeaseRecord>, Duration, Decision)] = &[
        ("absent", None, s(0), Decision::Create),
        (
            "ours, fresh",
            Some(record(Some(ME), 100)),
            s(0),
            Decision::Renew,
        ),
        // We renew our own Lease even when it looks expired: nobody else has taken it.
        (
            "ours, stale",
            Some(record(Some(ME), 100)),
            s(60),
            Decision::Renew,
        ),
        (
            "released",
            Some(record(None, 100)),
            s(0),
            Decision::TakeOver,
        ),
        (
            "other, just observed",
            Some(record(Some("other"), 100)),
            s(0),
            Decision::Follow {
                holder: "other".into(),
            },
        ),
        (
            "other, 1 s before expiry",
            Some(record(Some("other"), 100)),
            s(14),
            Decision::Follow {
                holder: "other".into(),
            },
        ),
        (
            "other, expired",
            Some(record(Some("other"), 100)),
            s(15),
            Decision::TakeOver,
        ),
        (
            "other, its own shorter duration",
            Some(short.clone()),
            s(5),
            Decision::TakeOver,
        ),
    ];
    for (name, lease, since_observed, want) in cases {
        assert_eq!(
            decide(ME, lease.as_ref(), t0, t0 + *since_observed),
            *want,
            "{name}"
        );
    }
}

#[test]
fn observation_restarts_only_on_holder_or_renew_time_change() {
    let t0 = Instant::now();
    let later = t0 + Duration::from_secs(30);
    let first = Observation::update(None, &record(Some("other"), 100), t0);
    assert_eq!(first.at, t0);
    // Same holder and renewTime (other fields may differ): the old observation stands, so the
    // Lease can expire by our clock however its renewTime compares with our wall clock.
    let mut same = record(Some("other"), 100);
    same.transitions = 9;
    assert_eq!(Observation::update(Some(&first), &same, later).at, t0);
    for changed in [
        record(Some("other"), 101),
        record(Some("third"), 100),
        record(None, 100),
    ] {
        assert_eq!(
            Observation::update(Some(&first), &changed, later).at,
            later,
            "{changed:?}"
        );
    }
}

#[test]
fn keep_leading_table() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let cases = [
        (RoundResult::Leading, s(30), true),
        (RoundResult::HeldByOther, s(0), false),
        (RoundResult::Failed, s(2), true),
        (RoundResult::Failed, s(9), true),
        (RoundResult::Failed, s(10), false),
        (RoundResult::Failed, s(12), false),
    ];
    for (result, since_renewed, want) in cases {
        assert_eq!(
            keep_leading(result, t0, t0 + since_renewed),
            want,
            "{result:?} after {since_renewed:?}"
        );
    }
}

#[test]
fn record_defaults_for_missing_fields() {
    let empty = LeaseRecord::from_lease(&Lease::default());
    assert_eq!(
        empty,
        LeaseRecord {
            holder: None,
            renew_time: None,
            lease_duration: LEASE_DURATION,
            transitions: 0,
        }
    );
    let lease: Lease = serde_json::from_value(json!({"spec": {"holderIdentity": "",
        "leaseDurationSeconds": -4, "leaseTransitions": 2}}))
    .unwrap();
    let r = LeaseRecord::from_lease(&lease);
    assert_eq!(
        (r.holder, r.lease_duration, r.transitions),
        (None, LEASE_DURATION, 2)
    );
}

#[test]
fn identity_has_a_random_suffix() {
    let (a, b) = (default_identity(), default_identity());
    assert_ne!(a, b);
    let (base, suffix) = a.rsplit_once('_').unwrap();
    assert!(!base.is_empty());
    assert_eq!(suffix.len(), 8);
}

// ---- scenarios ---------------------------------------------------------------------------------

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Send = tower_test::mock::SendResponse<Response<Body>>;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/palisade-system/leases";
const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/palisade-system/leases/palisade-controller-leader";
const OLD: &str = "2000-01-01T00:00:00.000000Z";

fn mock() -> (LeaderElector, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (LeaderElector::new(client, "palisade-system", ME), handle)
}

fn respond(send: Send, code: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
           "code": code, "message": reason})
}

fn lease(holder: &str, rv: &str, renew: &str, transitions: i32) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "palisade-controller-leader", "namespace": "palisade-system",
                        "resourceVersion": rv},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                    "acquireTime": OLD, "renewTime": renew,
                    "leaseTransitions": transitions}})
}

/// The next request, which must be `method path`; its JSON body (Null when empty).
async fn expect(handle: &mut Handle, method: Method, path: &str) -> (Value, Send) {
    let (req, send) = handle
        .next_request()
        .await
        .unwrap_or_else(|| panic!("{method} {path} expected"));
    assert_eq!((req.method(), req.uri().path()), (&method, path));
    if method != Method::GET {
        let query = req.uri().query().unwrap_or_default().to_owned();
        assert!(
            query.contains("fieldManager=palisade-controller"),
            "{query}"
        );
    }
    let bytes = req.into_body().collect_bytes().await.unwrap();
    (serde_json::from_slice(&bytes).unwrap_or(Value::Null), send)
}

/// A write of ours: holder, duration, and times present and parseable.
fn assert_held_by_us(body: &Value) {
    let spec = &body["spec"];
    assert_eq!(spec["holderIdentity"], ME);
    assert_eq!(spec["leaseDurationSeconds"], 15);
    for field in ["acquireTime", "renewTime"] {
        let time = spec[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} missing"));
        time.parse::<Timestamp>().unwrap();
    }
}

/// With the created Lease stored under resourceVersion "1".
fn created(mut body: Value) -> Value {
    body["metadata"]["resourceVersion"] = json!("1");
    body
}

#[tokio::test]
async fn a_absent_lease_is_created_and_we_lead() {
    let (mut elector, mut handle) = mock();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
        respond(send, StatusCode::NOT_FOUND, &status(404, "NotFound"));
        let (body, send) = expect(&mut handle, Method::POST, LEASES).await;
        assert_eq!(body["metadata"]["name"], "palisade-controller-leader");
        assert_eq!(body["metadata"]["namespace"], "palisade-system");
        assert_held_by_us(&body);
        assert_eq!(body["spec"]["leaseTransitions"], 0);
        respond(send, StatusCode::CREATED, &created(body));
    });
    assert_eq!(
        elector.try_acquire_or_renew().await.unwrap(),
        Round::Leading
    );
    api.await.unwrap();
}

#[tokio::test]
async fn a_409_on_create_is_no_leadership() {
    let (mut elector, mut handle) = mock();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
        respond(send, StatusCode::NOT_FOUND, &status(404, "NotFound"));
        let (_, send) = expect(&mut handle, Method::POST, LEASES).await;
        respond(send, StatusCode::CONFLICT, &status(409, "AlreadyExists"));
    });
    let err = elector.try_acquire_or_renew().await.unwrap_err();
    assert!(matches!(err, LeaderError::Conflict), "{err}");
    api.await.unwrap();
}

#[tokio::test]
async fn b_fresh_lease_of_another_is_followed_without_a_write() {
    let (mut elector, mut handle) = mock();
    let api = tokio::spawn(async move {
        // renewTime is 26 years old by the wall clock; what counts is that we only just saw
        // it, so the Lease is valid for another 15 s by our clock.
        let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
        respond(send, StatusCode::OK, &lease("other", "7", OLD, 3));
        assert!(handle.next_request().await.is_none(), "no write expected");
    });
    let round = elector.try_acquire_or_renew().await.unwrap();
    assert_eq!(
        round,
        Round::Following {
            holder: "other".into()
        }
    );
    drop(elector);
    api.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn c_lease_of_another_unchanged_for_a_lease_duration_is_taken_over() {
    let (mut elector, mut handle) = mock();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
        respond(send, StatusCode::OK, &lease("other", "7", OLD, 3));
        let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
        respond(send, StatusCode::OK, &lease("other", "7", OLD, 3));
        let (body, send) = expect(&mut handle, Method::PUT, LEASE).await;
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_held_by_us(&body);
        assert_eq!(body["spec"]["leaseTransitions"], 4);
        assert_ne!(
            body["spec"]["acquireTime"], OLD,
            "a takeover starts a new term"
        );
        let mut stored = body;
        stored["metadata"]["resourceVersion"] = json!("8");
        respond(send, StatusCode::OK, &stored);
    });
    let first = elector.try_acquire_or_renew().await.unwrap();
    assert!(matches!(first, Round::Following { .. }));
    tokio::time::advance(LEASE_DURATION).await;
    assert_eq!(
        elector.try_acquire_or_renew().await.unwrap(),
        Round::Leading
    );
    api.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn c_a_lease_renewed_meanwhile_is_not_taken_over() {
    let (mut elector, mut handle) = mock();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
        respond(send, StatusCode::OK, &lease("other", "7", OLD, 3));
        let renewed = "2000-01-01T00:00:10.000000Z";
        for _ in 0..2 {
            let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
            respond(send, StatusCode::OK, &lease("other", "8", renewed, 3));
        }
        assert!(handle.next_request().await.is_none(), "no write expected");
    });
    let s = Duration::from_secs;
    assert!(matches!(
        elector.try_acquire_or_renew().await.unwrap(),
        Round::Following { .. }
    ));
    tokio::time::advance(s(10)).await;
    // Observed a renewal at t=10: valid until t=25 by our clock.
    assert!(matches!(
        elector.try_acquire_or_renew().await.unwrap(),
        Round::Following { .. }
    ));
    tokio::time::advance(s(14)).await;
    assert!(matches!(
        elector.try_acquire_or_renew().await.unwrap(),
        Round::Following { .. }
    ));
    drop(elector);
    api.await.unwrap();
}

#[tokio::test]
async fn d_our_lease_is_renewed_with_the_version_we_read() {
    let (mut elector, mut handle) = mock();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
        respond(send, StatusCode::OK, &lease(ME, "12", OLD, 2));
        let (body, send) = expect(&mut handle, Method::PUT, LEASE).await;
        assert_eq!(body["metadata"]["resourceVersion"], "12");
        assert_held_by_us(&body);
        assert_eq!(
            body["spec"]["leaseTransitions"], 2,
            "a renewal is no transition"
        );
        let acquired: Timestamp = body["spec"]["acquireTime"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(acquired, OLD.parse::<Timestamp>().unwrap(), "same term");
        assert_ne!(body["spec"]["renewTime"], OLD);
        respond(send, StatusCode::OK, &body);
    });
    assert_eq!(
        elector.try_acquire_or_renew().await.unwrap(),
        Round::Leading
    );
    api.await.unwrap();
}

#[tokio::test]
async fn a_lease_without_resource_version_is_not_written() {
    let (mut elector, mut handle) = mock();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
        let mut body = lease(ME, "1", OLD, 0);
        body["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        respond(send, StatusCode::OK, &body);
        assert!(handle.next_request().await.is_none(), "no write expected");
    });
    let err = elector.try_acquire_or_renew().await.unwrap_err();
    assert!(matches!(err, LeaderError::NoResourceVersion), "{err}");
    drop(elector);
    api.await.unwrap();
}

/// Runs the elector until the returned sender fires (or is dropped).
fn spawn_elector(
    elector: LeaderElector,
) -> (watch::Receiver<bool>, JoinHandle<()>, oneshot::Sender<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let (rx, task) = elector.spawn(async move {
        let _ = stopped.await;
    });
    (rx, task, stop)
}

/// Waits (paused time advances by itself) until leadership is `want`; the virtual time it
/// took.
async fn leadership(rx: &mut watch::Receiver<bool>, want: bool) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(120), rx.wait_for(|l| *l == want))
        .await
        .expect("leadership change within 120 s")
        .expect("elector alive");
    start.elapsed()
}

#[tokio::test(start_paused = true)]
async fn e_conflict_on_update_is_not_leadership_and_the_next_round_rereads() {
    let (elector, mut handle) = mock();
    let (mut rx, task, stop) = spawn_elector(elector);
    // A released Lease: we try to take it over, but another replica wrote first.
    let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
    respond(send, StatusCode::OK, &lease("", "5", OLD, 1));
    let (body, send) = expect(&mut handle, Method::PUT, LEASE).await;
    assert_eq!(body["metadata"]["resourceVersion"], "5");
    respond(send, StatusCode::CONFLICT, &status(409, "Conflict"));
    // Re-read, never force: the winner holds it.
    let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
    respond(send, StatusCode::OK, &lease("other", "6", OLD, 2));
    let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
    respond(send, StatusCode::OK, &lease("other", "6", OLD, 2));
    assert!(!*rx.borrow_and_update());
    assert!(!rx.has_changed().unwrap());
    stop.send(()).unwrap();
    task.await.unwrap();
    // Not leading: nothing to release.
    assert!(handle.next_request().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn f_failed_renewals_step_down_at_the_renew_deadline() {
    let (elector, mut handle) = mock();
    let (mut rx, task, stop) = spawn_elector(elector);
    let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
    respond(send, StatusCode::NOT_FOUND, &status(404, "NotFound"));
    let (body, send) = expect(&mut handle, Method::POST, LEASES).await;
    respond(send, StatusCode::CREATED, &created(body));
    leadership(&mut rx, true).await;
    let api = tokio::spawn(async move {
        let mut reads = 0;
        while let Some((req, send)) = handle.next_request().await {
            assert_eq!((req.method(), req.uri().path()), (&Method::GET, LEASE));
            reads += 1;
            respond(
                send,
                StatusCode::INTERNAL_SERVER_ERROR,
                &status(500, "InternalError"),
            );
        }
        reads
    });
    let took = leadership(&mut rx, false).await;
    // Rounds at 2, 4, 6 and 8 s fail; the one due at 10 s has no time left and steps down
    // without asking.
    assert_eq!(took, RENEW_DEADLINE);
    stop.send(()).unwrap();
    task.await.unwrap();
    // No release either: the elector no longer knows it holds the Lease.
    assert_eq!(api.await.unwrap(), 4);
}

#[tokio::test(start_paused = true)]
async fn f_an_unanswered_renewal_steps_down_at_the_renew_deadline() {
    let (elector, mut handle) = mock();
    let (mut rx, _task, _stop) = spawn_elector(elector);
    let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
    respond(send, StatusCode::NOT_FOUND, &status(404, "NotFound"));
    let (body, send) = expect(&mut handle, Method::POST, LEASES).await;
    respond(send, StatusCode::CREATED, &created(body));
    leadership(&mut rx, true).await;
    // The API server accepts the next read and never answers.
    let (_, hung) = expect(&mut handle, Method::GET, LEASE).await;
    let took = leadership(&mut rx, false).await;
    assert_eq!(took, RENEW_DEADLINE - RETRY_PERIOD);
    drop(hung);
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_sees_another_holder_steps_down_at_once() {
    let (elector, mut handle) = mock();
    let (mut rx, _task, _stop) = spawn_elector(elector);
    let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
    respond(send, StatusCode::NOT_FOUND, &status(404, "NotFound"));
    let (body, send) = expect(&mut handle, Method::POST, LEASES).await;
    respond(send, StatusCode::CREATED, &created(body));
    leadership(&mut rx, true).await;
    let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
    respond(send, StatusCode::OK, &lease("other", "9", OLD, 1));
    assert_eq!(leadership(&mut rx, false).await, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_the_lease_with_the_version_we_wrote() {
    let (elector, mut handle) = mock();
    let (mut rx, task, stop) = spawn_elector(elector);
    let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
    respond(send, StatusCode::NOT_FOUND, &status(404, "NotFound"));
    let (body, send) = expect(&mut handle, Method::POST, LEASES).await;
    respond(send, StatusCode::CREATED, &created(body));
    leadership(&mut rx, true).await;
    stop.send(()).unwrap();
    let (body, send) = expect(&mut handle, Method::PUT, LEASE).await;
    assert!(!*rx.borrow(), "writers are told to stop before the release");
    assert_eq!(body["metadata"]["resourceVersion"], "1");
    assert_eq!(body["spec"]["holderIdentity"], "");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
    assert_eq!(body["spec"]["leaseTransitions"], 0);
    respond(send, StatusCode::OK, &body);
    task.await.unwrap();
    assert!(handle.next_request().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn leadership_is_kept_by_renewals_and_regained_after_a_loss() {
    let (elector, mut handle) = mock();
    let (mut rx, _task, _stop) = spawn_elector(elector);
    let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
    respond(send, StatusCode::NOT_FOUND, &status(404, "NotFound"));
    let (body, send) = expect(&mut handle, Method::POST, LEASES).await;
    respond(send, StatusCode::CREATED, &created(body));
    leadership(&mut rx, true).await;
    for rv in 2..5 {
        let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
        respond(
            send,
            StatusCode::OK,
            &lease(ME, &(rv - 1).to_string(), OLD, 0),
        );
        let (mut body, send) = expect(&mut handle, Method::PUT, LEASE).await;
        assert_eq!(body["metadata"]["resourceVersion"], (rv - 1).to_string());
        body["metadata"]["resourceVersion"] = json!(rv.to_string());
        respond(send, StatusCode::OK, &body);
    }
    assert!(*rx.borrow() && !rx.has_changed().unwrap(), "still leading");
    // Someone took it over; later it is released and we take it back.
    let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
    respond(send, StatusCode::OK, &lease("other", "5", OLD, 1));
    leadership(&mut rx, false).await;
    let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
    respond(send, StatusCode::OK, &lease("", "6", OLD, 1));
    let (body, send) = expect(&mut handle, Method::PUT, LEASE).await;
    assert_eq!(body["spec"]["leaseTransitions"], 2);
    respond(send, StatusCode::OK, &body);
    leadership(&mut rx, true).await;
}
