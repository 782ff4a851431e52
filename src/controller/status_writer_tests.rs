//! Status writer: tower-test scenarios asserting every write (path, query, content type, body),
//! none when nothing changed or when not the leader, bounded concurrency and backoff.

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use super::tests::{T0, condition, conflicted_mesh, dr, engine_of, pa, pod, t};
use super::*;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, code: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn writer() -> (StatusWriter, Handle, ReconcileMetrics) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let metrics = ReconcileMetrics::default();
    let w = StatusWriter::new(
        kube::Client::new(service, "default"),
        MeshConfig::default(),
        metrics.clone(),
    )
    .with_clock(|| t(T0));
    (w, handle, metrics)
}

struct Seen {
    path: String,
    query: String,
    content_type: String,
    body: Value,
    send: tower_test::mock::SendResponse<Response<Body>>,
}

async fn next(handle: &mut Handle) -> Seen {
    let (req, send) = handle.next_request().await.expect("a request");
    assert_eq!(req.method(), Method::PATCH);
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let content_type = req.headers()["content-type"].to_str().unwrap().to_string();
    let body = req.into_body().collect_bytes().await.unwrap();
    Seen {
        path,
        query,
        content_type,
        body: serde_json::from_slice(&body).expect("JSON body"),
        send,
    }
}

/// Answers an apply with the object as the API server would (the body, plus metadata).
fn answer(seen: Seen) {
    let mut object = seen.body.clone();
    object["metadata"]["uid"] = json!("u");
    object["metadata"]["generation"] = json!(1);
    object["spec"] = json!({});
    respond(seen.send, StatusCode::OK, &object);
}

async fn expect_silence(handle: &mut Handle, for_: Duration) {
    if let Ok(r) = tokio::time::timeout(for_, handle.next_request()).await {
        let what = r.map(|(req, _)| format!("{} {}", req.method(), req.uri()));
        panic!("no request expected, got {what:?}");
    }
}

fn counted(metrics: &ReconcileMetrics, kind: &'static str, result: &'static str) -> u64 {
    metrics
        .status_writes
        .get_or_create(&crate::controller::metrics::StatusWriteLabels { kind, result })
        .get()
}

#[tokio::test(start_paused = true)]
async fn applies_the_exact_status_once_per_object_and_only_while_leader() {
    let (w, mut handle, metrics) = writer();
    let (inv_tx, inv_rx) = watch::channel(Arc::new(conflicted_mesh()));
    let (lead_tx, lead_rx) = watch::channel(false);
    let task = w.spawn_while_leader(inv_rx, lead_rx);
    // Not the leader: nothing, whatever the inventory does.
    expect_silence(&mut handle, RESYNC * 2).await;
    inv_tx.send_modify(|_| {});
    expect_silence(&mut handle, RESYNC).await;

    lead_tx.send_replace(true);
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next(&mut handle).await);
    }
    seen.sort_by(|a, b| a.path.cmp(&b.path));
    let base = "/apis/security.palisade.dev/v1/namespaces";
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            format!("{base}/default/peerauthentications/new/status"),
            format!("{base}/default/peerauthentications/old/status"),
            format!("{base}/palisade-system/peerauthentications/web/status"),
        ]
    );
    for s in &seen {
        assert_eq!(s.query, "&force=true&fieldManager=palisade-controller");
        assert_eq!(s.content_type, "application/apply-patch+yaml");
    }
    let inv = conflicted_mesh();
    let expected = desired_statuses(&inv, &engine_of(&inv), t(T0));
    let new = &expected[0];
    assert_eq!(
        seen[0].body,
        json!({
            "apiVersion": "security.palisade.dev/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "new", "namespace": "default"},
            "status": {
                "observedGeneration": 1,
                "conditions": [
                    {"type": "Accepted", "status": "False", "reason": "OlderPolicyWins",
                     "message": condition(&new.status, ACCEPTED).2,
                     "lastTransitionTime": T0, "observedGeneration": 1},
                    {"type": "Conflicted", "status": "True", "reason": "OlderPolicyWins",
                     "message": "lost to the older namespace-wide policy PeerAuthentication default/old and has no effect there",
                     "lastTransitionTime": T0, "observedGeneration": 1},
                    {"type": "Unused", "status": "False", "reason": "InUse",
                     "message": "Nothing shows the policy applies to nothing",
                     "lastTransitionTime": T0, "observedGeneration": 1},
                    {"type": "NotEnforced", "status": "False", "reason": "AllEnforced",
                     "message": "Every field is enforced",
                     "lastTransitionTime": T0, "observedGeneration": 1},
                ],
            },
        })
    );
    for s in seen {
        answer(s);
    }
    // An unrelated change before the watch delivers our writes: nothing written twice.
    inv_tx.send_modify(|inv| {
        let mut next = (**inv).clone();
        pod(&mut next, "other", "db", &[("app", "db")]);
        *inv = Arc::new(next);
    });
    expect_silence(&mut handle, Duration::from_secs(5)).await;
    assert_eq!(counted(&metrics, "PeerAuthentication", "applied"), 3);

    // The watch delivers the objects with the written statuses: still nothing to write.
    let written = desired_statuses(&inv, &engine_of(&inv), t(T0));
    let mut caught_up = Inventory {
        pods: inv.pods.clone(),
        namespaces: inv.namespaces.clone(),
        ..Inventory::default()
    };
    for (d, age) in written.iter().zip([2, 1, 3]) {
        let spec = serde_json::to_value(&inv.peer_authentications[&d.key].policy.spec).unwrap();
        pa(
            &mut caught_up,
            &d.key.namespace,
            &d.key.name,
            age,
            spec,
            Some(d.status.clone()),
        );
    }
    inv_tx.send_replace(Arc::new(caught_up.clone()));
    expect_silence(&mut handle, RESYNC * 2).await;

    // Someone edits a status by hand: it is restored.
    let mut edited = caught_up.clone();
    let key = ObjectKey::new("default", "old");
    let mut record = (*edited.peer_authentications[&key]).clone();
    record.status = Some(PolicyStatus::default());
    edited.peer_authentications.insert(key, Arc::new(record));
    inv_tx.send_replace(Arc::new(edited));
    let restore = next(&mut handle).await;
    assert_eq!(
        restore.path,
        format!("{base}/default/peerauthentications/old/status")
    );
    assert_eq!(
        restore.body["status"],
        serde_json::to_value(&written[1].status).unwrap()
    );
    answer(restore);

    // Leadership lost: silent even when something changes.
    lead_tx.send_replace(false);
    tokio::task::yield_now().await;
    inv_tx.send_replace(Arc::new(conflicted_mesh()));
    expect_silence(&mut handle, RESYNC * 2).await;
    drop(lead_tx);
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("ends with the elector")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn nothing_is_written_when_every_status_is_current() {
    let (w, mut handle, _metrics) = writer();
    let mut inv = Inventory::default();
    dr(
        &mut inv,
        "default",
        "reviews",
        json!({"host": "reviews"}),
        None,
    );
    let desired = desired_statuses(&inv, &engine_of(&inv), t(T0));
    let mut current = Inventory::default();
    dr(
        &mut current,
        "default",
        "reviews",
        json!({"host": "reviews"}),
        Some(desired[0].status.clone()),
    );
    let (_inv_tx, inv_rx) = watch::channel(Arc::new(current));
    let (_lead_tx, lead_rx) = watch::channel(true);
    let _task = w.spawn_while_leader(inv_rx, lead_rx);
    // Several resyncs pass without a request.
    expect_silence(&mut handle, RESYNC * 3).await;
}

#[tokio::test(start_paused = true)]
async fn deleted_objects_are_not_errors_and_failures_are_retried_with_backoff() {
    let (w, mut handle, metrics) = writer();
    let mut inv = Inventory::default();
    dr(
        &mut inv,
        "default",
        "reviews",
        json!({"host": "reviews"}),
        None,
    );
    let (_inv_tx, inv_rx) = watch::channel(Arc::new(inv.clone()));
    let (_lead_tx, lead_rx) = watch::channel(true);
    let _task = w.spawn_while_leader(inv_rx, lead_rx);
    let path =
        "/apis/networking.palisade.dev/v1/namespaces/default/destinationrules/reviews/status";

    // A server error: retried after 1 s, then 2 s.
    let failure = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "InternalError", "code": 500, "message": "etcd"});
    let first = next(&mut handle).await;
    assert_eq!(first.path, path);
    assert_eq!(first.body["kind"], "DestinationRule");
    assert_eq!(first.body["apiVersion"], "networking.palisade.dev/v1");
    assert_eq!(first.body["status"]["observedGeneration"], 4);
    let started = Instant::now();
    respond(first.send, StatusCode::INTERNAL_SERVER_ERROR, &failure);
    let second = next(&mut handle).await;
    assert_eq!(started.elapsed(), FIRST_BACKOFF);
    respond(second.send, StatusCode::INTERNAL_SERVER_ERROR, &failure);
    let third = next(&mut handle).await;
    assert_eq!(started.elapsed(), FIRST_BACKOFF * 3);
    assert_eq!(counted(&metrics, "DestinationRule", "error"), 2);

    // Deleted meanwhile: counted as not found, not retried.
    let gone = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "NotFound", "code": 404, "message": "not found"});
    respond(third.send, StatusCode::NOT_FOUND, &gone);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(counted(&metrics, "DestinationRule", "not_found"), 1);
    // Only the resync (the inventory still lists the object) comes back to it.
    expect_silence(&mut handle, RESYNC - Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn writes_are_bounded_in_flight() {
    let (w, mut handle, _metrics) = writer();
    let mut inv = Inventory::default();
    for i in 0..(MAX_IN_FLIGHT + 3) {
        dr(
            &mut inv,
            "default",
            &format!("r{i:02}"),
            json!({"host": format!("h{i}")}),
            None,
        );
    }
    let (_inv_tx, inv_rx) = watch::channel(Arc::new(inv));
    let (_lead_tx, lead_rx) = watch::channel(true);
    let _task = w.spawn_while_leader(inv_rx, lead_rx);
    let mut open = Vec::new();
    for _ in 0..MAX_IN_FLIGHT {
        open.push(next(&mut handle).await);
    }
    // The limit is reached: the next write waits for an answer.
    expect_silence(&mut handle, Duration::from_secs(5)).await;
    answer(open.remove(0));
    let more = next(&mut handle).await;
    assert!(more.path.ends_with("/status"));
}

/// An AuthorizationPolicy record of `shop` with generation 4.
fn ap(inv: &mut Inventory, name: &str, spec: Value, status: Option<PolicyStatus>) {
    use crate::controller::inventory::PolicyRecord;
    inv.authorization_policies.insert(
        ObjectKey::new("shop", name),
        Arc::new(PolicyRecord {
            policy: crate::policy::Policy {
                meta: crate::policy::PolicyMeta {
                    namespace: "shop".into(),
                    name: name.into(),
                    creation_timestamp: None,
                    seq: 0,
                },
                spec: serde_json::from_value(spec).expect("spec"),
            },
            generation: Some(4),
            status,
        }),
    );
}

#[tokio::test(start_paused = true)]
async fn authorization_policies_get_their_conditions_written_and_kept() {
    let (w, mut handle, metrics) = writer();
    let custom = json!({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]});
    let unused = json!({"selector": {"matchLabels": {"app": "nothing"}}, "rules": [{}]});
    let mut inv = Inventory::default();
    pod(&mut inv, "shop", "web", &[("app", "web")]);
    ap(&mut inv, "ext", custom.clone(), None);
    ap(&mut inv, "idle", unused.clone(), None);
    let (inv_tx, inv_rx) = watch::channel(Arc::new(inv));
    let (_lead_tx, lead_rx) = watch::channel(true);
    let task = w.spawn_while_leader(inv_rx, lead_rx);
    let mut seen = vec![next(&mut handle).await, next(&mut handle).await];
    seen.sort_by(|a, b| a.path.cmp(&b.path));
    let base = "/apis/security.palisade.dev/v1/namespaces/shop/authorizationpolicies";
    assert_eq!(seen[0].path, format!("{base}/ext/status"));
    assert_eq!(seen[1].path, format!("{base}/idle/status"));
    let mut written = Vec::new();
    for s in seen {
        assert_eq!(s.query, "&force=true&fieldManager=palisade-controller");
        assert_eq!(s.body["kind"], "AuthorizationPolicy");
        assert_eq!(s.body["status"]["observedGeneration"], 4);
        let status: PolicyStatus =
            serde_json::from_value(s.body["status"].clone()).expect("a status");
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.last_transition_time.as_deref() == Some(T0)
                    && c.observed_generation == Some(4)),
            "{status:?}"
        );
        written.push(status);
        answer(s);
    }
    assert_eq!(
        condition(&written[0], ACCEPTED),
        (
            "False".into(),
            "UnsupportedAction".into(),
            condition(&written[0], ACCEPTED).2
        )
    );
    assert_eq!(condition(&written[1], UNUSED).0, "True");
    assert_eq!(condition(&written[1], UNUSED).1, "SelectsNothing");

    // The objects now carry what was written: a later pass (and a resync) writes nothing.
    let mut carried = Inventory::default();
    pod(&mut carried, "shop", "web", &[("app", "web")]);
    ap(&mut carried, "ext", custom, Some(written[0].clone()));
    ap(&mut carried, "idle", unused, Some(written[1].clone()));
    inv_tx.send_replace(Arc::new(carried));
    expect_silence(&mut handle, RESYNC * 2).await;
    assert_eq!(counted(&metrics, "AuthorizationPolicy", "applied"), 2);
    task.abort();
}
