//! Status: the pure rule by tables, and tower-test scenarios asserting every write.

use std::collections::BTreeMap;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use super::*;
use crate::api::{DestinationRuleSpec, PeerAuthenticationSpec};
use crate::controller::inventory::PolicyRecord;
use crate::policy::{NamespaceInfo, Policy, PolicyMeta, Severity, Workload};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const ROOT: &str = "palisade-system";
const T0: &str = "2026-01-01T00:00:00Z";
const T1: &str = "2026-01-01T00:10:00Z";

fn t(text: &str) -> Timestamp {
    text.parse().expect("timestamp")
}

fn pa_obj(ns: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind: PolicyKind::PeerAuthentication,
        namespace: ns.into(),
        name: name.into(),
    }
}

fn finding(kind: DiagnosticKind, message: &str) -> Diagnostic {
    Diagnostic {
        severity: Severity::Warning,
        object: pa_obj("default", "p"),
        kind,
        message: message.into(),
    }
}

fn condition(status: &PolicyStatus, type_: &str) -> (String, String, String) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("{type_} missing"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[test]
fn conditions_from_findings() {
    let conflict = || {
        finding(
            DiagnosticKind::Conflict {
                winner: pa_obj("default", "old"),
            },
            "lost to old",
        )
    };
    let not_enforced = || {
        finding(
            DiagnosticKind::NotEnforced {
                field: "spec.trafficPolicy.loadBalancer".into(),
            },
            "lb kept",
        )
    };
    let invalid = || {
        finding(
            DiagnosticKind::Invalid {
                field: "spec.host".into(),
            },
            "host empty",
        )
    };
    struct Case {
        name: &'static str,
        findings: Vec<Diagnostic>,
        ignored: bool,
        // (type, status, reason, message contains)
        expect: &'static [(&'static str, &'static str, &'static str, &'static str)],
    }
    let cases = vec![
        Case {
            name: "nothing found: in force, everything False",
            findings: vec![],
            ignored: false,
            expect: &[
                (ACCEPTED, "True", "Accepted", "in force"),
                (CONFLICTED, "False", "NoConflict", ""),
                (UNUSED, "False", "InUse", ""),
                (NOT_ENFORCED, "False", "AllEnforced", ""),
            ],
        },
        Case {
            name: "lost its scope",
            findings: vec![conflict()],
            ignored: true,
            expect: &[
                (ACCEPTED, "False", "OlderPolicyWins", "lost to old"),
                (CONFLICTED, "True", "OlderPolicyWins", "lost to old"),
                (UNUSED, "False", "InUse", ""),
            ],
        },
        Case {
            name: "lost on some workloads, in force on others",
            findings: vec![conflict()],
            ignored: false,
            expect: &[
                (ACCEPTED, "True", "Accepted", ""),
                (CONFLICTED, "True", "OlderPolicyWins", "lost to old"),
            ],
        },
        Case {
            name: "root-namespace selector",
            findings: vec![finding(
                DiagnosticKind::RootNamespaceSelector,
                "applies to nothing",
            )],
            ignored: true,
            expect: &[
                (
                    ACCEPTED,
                    "False",
                    "RootNamespaceSelector",
                    "applies to nothing",
                ),
                (
                    UNUSED,
                    "True",
                    "RootNamespaceSelector",
                    "applies to nothing",
                ),
                (CONFLICTED, "False", "NoConflict", ""),
            ],
        },
        Case {
            name: "selects nothing yet: still accepted",
            findings: vec![finding(
                DiagnosticKind::SelectsNothing,
                "matches no workload",
            )],
            ignored: false,
            expect: &[
                (ACCEPTED, "True", "Accepted", ""),
                (UNUSED, "True", "SelectsNothing", "matches no workload"),
            ],
        },
        Case {
            name: "merge drop and not merged",
            findings: vec![
                finding(
                    DiagnosticKind::MergeDropped {
                        into: pa_obj("default", "first"),
                        what: "trafficPolicy".into(),
                    },
                    "dropped tp",
                ),
                finding(
                    DiagnosticKind::NotMerged {
                        used: pa_obj("default", "other"),
                    },
                    "not merged",
                ),
            ],
            ignored: false,
            expect: &[
                (ACCEPTED, "True", "Accepted", ""),
                (
                    CONFLICTED,
                    "True",
                    "MergedIntoOlderRule",
                    "dropped tp; not merged",
                ),
            ],
        },
        Case {
            name: "fields kept but not enforced",
            findings: vec![not_enforced()],
            ignored: false,
            expect: &[
                (ACCEPTED, "True", "Accepted", ""),
                (NOT_ENFORCED, "True", "FieldsNotEnforced", "lb kept"),
            ],
        },
        Case {
            name: "invalid as a whole",
            findings: vec![invalid(), not_enforced()],
            ignored: true,
            expect: &[
                (ACCEPTED, "False", "Invalid", "host empty"),
                (NOT_ENFORCED, "True", "InvalidFields", "host empty; lb kept"),
            ],
        },
    ];
    for case in cases {
        let refs: Vec<&Diagnostic> = case.findings.iter().collect();
        let status = policy_status(&refs, case.ignored, Some(3), None, t(T0));
        let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types,
            [ACCEPTED, CONFLICTED, UNUSED, NOT_ENFORCED],
            "{}",
            case.name
        );
        assert_eq!(status.observed_generation, Some(3), "{}", case.name);
        for c in &status.conditions {
            assert_eq!(c.observed_generation, Some(3), "{}", case.name);
            assert_eq!(c.last_transition_time.as_deref(), Some(T0), "{}", case.name);
        }
        for (type_, want_status, want_reason, contains) in case.expect {
            let (status_, reason, message) = condition(&status, type_);
            assert_eq!(
                (status_.as_str(), reason.as_str()),
                (*want_status, *want_reason),
                "{}: {type_}",
                case.name
            );
            assert!(
                message.contains(contains),
                "{}: {type_}: {message}",
                case.name
            );
        }
    }
}

#[test]
fn transition_time_is_kept_while_the_status_holds() {
    let none: Vec<&Diagnostic> = vec![];
    let first = policy_status(&none, false, Some(1), None, t(T0));
    // Same findings later (and a new generation): every time kept.
    let again = policy_status(&none, false, Some(2), Some(&first), t(T1));
    for c in &again.conditions {
        assert_eq!(c.last_transition_time.as_deref(), Some(T0), "{}", c.type_);
        assert_eq!(c.observed_generation, Some(2));
    }
    // A conflict appears: Accepted and Conflicted flip (new time), the others keep theirs.
    let lost = finding(
        DiagnosticKind::Conflict {
            winner: pa_obj("default", "old"),
        },
        "lost",
    );
    let flipped = policy_status(&[&lost], true, Some(2), Some(&again), t(T1));
    let times: BTreeMap<&str, Option<&str>> = flipped
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.last_transition_time.as_deref()))
        .collect();
    assert_eq!(times[ACCEPTED], Some(T1));
    assert_eq!(times[CONFLICTED], Some(T1));
    assert_eq!(times[UNUSED], Some(T0));
    assert_eq!(times[NOT_ENFORCED], Some(T0));
    // A reason or message change alone keeps the time (only status transitions count).
    let other = finding(
        DiagnosticKind::Conflict {
            winner: pa_obj("default", "older"),
        },
        "lost to another",
    );
    let reworded = policy_status(&[&other], true, Some(2), Some(&flipped), t(T0));
    assert_eq!(
        reworded.conditions[0].last_transition_time.as_deref(),
        Some(T1)
    );
    assert_eq!(condition(&reworded, CONFLICTED).2, "lost to another");
}

#[test]
fn long_messages_are_cut() {
    let long = "é".repeat(MAX_MESSAGE);
    let d = finding(DiagnosticKind::SelectsNothing, &long);
    let status = policy_status(&[&d], false, None, None, t(T0));
    let (_, _, message) = condition(&status, UNUSED);
    assert!(message.len() <= MAX_MESSAGE, "{}", message.len());
    assert!(message.ends_with("..."));
}

// --- inventories -------------------------------------------------------------------------

fn meta(ns: &str, name: &str, age: i64) -> PolicyMeta {
    PolicyMeta {
        namespace: ns.into(),
        name: name.into(),
        creation_timestamp: Some(Timestamp::from_second(1_700_000_000 + age).expect("ts")),
        seq: 0,
    }
}

fn pa(
    inv: &mut Inventory,
    ns: &str,
    name: &str,
    age: i64,
    spec: Value,
    status: Option<PolicyStatus>,
) {
    let spec: PeerAuthenticationSpec = serde_json::from_value(spec).expect("spec");
    inv.peer_authentications.insert(
        ObjectKey::new(ns, name),
        Arc::new(PolicyRecord {
            policy: Policy {
                meta: meta(ns, name, age),
                spec,
            },
            generation: Some(1),
            status,
        }),
    );
}

fn dr(inv: &mut Inventory, ns: &str, name: &str, spec: Value, status: Option<PolicyStatus>) {
    let spec: DestinationRuleSpec = serde_json::from_value(spec).expect("spec");
    inv.destination_rules.insert(
        ObjectKey::new(ns, name),
        Arc::new(PolicyRecord {
            policy: Policy {
                meta: meta(ns, name, 1),
                spec,
            },
            generation: Some(4),
            status,
        }),
    );
}

fn pod(inv: &mut Inventory, ns: &str, name: &str, labels: &[(&str, &str)]) {
    use crate::controller::inventory::PodRecord;
    inv.namespaces.insert(
        ns.into(),
        Arc::new(NamespaceInfo {
            name: ns.into(),
            labels: BTreeMap::new(),
        }),
    );
    inv.pods.insert(
        ObjectKey::new(ns, name),
        Arc::new(PodRecord {
            workload: Workload {
                namespace: ns.into(),
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                service_account: "default".into(),
                ports: vec![],
            },
            ips: vec![],
            active: true,
        }),
    );
}

/// Two namespace-wide policies in `default` (the newer loses) and a root-namespace selector
/// policy matching `default/web`.
fn conflicted_mesh() -> Inventory {
    let mut inv = Inventory::default();
    pod(&mut inv, "default", "web", &[("app", "web")]);
    pa(
        &mut inv,
        "default",
        "old",
        1,
        json!({"mtls": {"mode": "STRICT"}}),
        None,
    );
    pa(
        &mut inv,
        "default",
        "new",
        2,
        json!({"mtls": {"mode": "DISABLE"}}),
        None,
    );
    pa(
        &mut inv,
        ROOT,
        "web",
        3,
        json!({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"}}),
        None,
    );
    inv
}

fn engine_of(inv: &Inventory) -> PolicyEngine {
    PolicyEngine::new(inv.mesh_input(&MeshConfig::default()))
}

#[test]
fn desired_statuses_of_an_inventory() {
    let inv = conflicted_mesh();
    let desired = desired_statuses(&inv, &engine_of(&inv), t(T0));
    let summary: Vec<(String, String, String)> = desired
        .iter()
        .map(|d| {
            let (status, reason, _) = condition(&d.status, ACCEPTED);
            (d.key.to_string(), status, reason)
        })
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        summary,
        [
            s("default/new", "False", "OlderPolicyWins"),
            s("default/old", "True", "Accepted"),
            s("palisade-system/web", "False", "RootNamespaceSelector"),
        ]
    );
    assert!(desired.iter().all(|d| d.changed));
    // The root-namespace policy's status names the workload it seems to target (item 9).
    let root = &desired[2].status;
    assert!(
        condition(root, UNUSED).2.contains("default/web"),
        "{root:?}"
    );

    // Objects that already carry their status are unchanged; the time of the first write is
    // what they carry, so a later pass computes the same status.
    let mut carried = Inventory::default();
    for d in &desired {
        let record = &inv.peer_authentications[&d.key];
        let spec = serde_json::to_value(&record.policy.spec).unwrap();
        let age = if d.key.name == "old" {
            1
        } else if d.key.name == "new" {
            2
        } else {
            3
        };
        pa(
            &mut carried,
            &d.key.namespace,
            &d.key.name,
            age,
            spec,
            Some(d.status.clone()),
        );
    }
    carried.pods = inv.pods.clone();
    carried.namespaces = inv.namespaces.clone();
    let later = desired_statuses(&carried, &engine_of(&carried), t(T1));
    assert!(later.iter().all(|d| !d.changed), "{later:?}");
}

// --- the writer ----------------------------------------------------------------------------

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
