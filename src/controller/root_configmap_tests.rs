//! Root-cert ConfigMaps: the decision by tables, and tower-test scenarios that answer the
//! watch (LIST, then WATCH with events) and assert every write.

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};

use super::*;
use crate::controller::metrics::ConfigMapWriteLabels;
use crate::policy::NamespaceInfo;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Send = tower_test::mock::SendResponse<Response<Body>>;

fn bundle(bytes: &[u8]) -> TrustBundle {
    TrustBundle::new(CertificateDer::from(bytes.to_vec()))
}

fn observed(pem: &str) -> Observed {
    Observed {
        resource_version: Some("7".into()),
        root_cert: Some(digest(pem)),
        only_root_cert: true,
        labelled: true,
    }
}

#[test]
fn decisions() {
    let pem = bundle(b"root").to_pem();
    let want = digest(&pem);
    let replace = Some(Action::Replace {
        resource_version: Some("7".into()),
    });
    let cases: Vec<(&str, Option<Observed>, Option<Action>)> = vec![
        ("absent: create", None, Some(Action::Create)),
        ("as it should be: nothing", Some(observed(&pem)), None),
        (
            "other bundle (edit or rotation): replace",
            Some(observed("old")),
            replace.clone(),
        ),
        (
            "key removed: replace",
            Some(Observed {
                root_cert: None,
                ..observed(&pem)
            }),
            replace.clone(),
        ),
        (
            "extra key or binaryData: replace",
            Some(Observed {
                only_root_cert: false,
                ..observed(&pem)
            }),
            replace.clone(),
        ),
        (
            "our label removed: replace",
            Some(Observed {
                labelled: false,
                ..observed(&pem)
            }),
            replace,
        ),
    ];
    for (name, seen, action) in cases {
        assert_eq!(decide(seen.as_ref(), &want), action, "{name}");
    }
}

fn cm(namespace: &str, rv: &str, data: Value, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": CONFIGMAP_NAME, "namespace": namespace, "resourceVersion": rv,
                        "labels": labels},
           "data": data})
}

fn ours(namespace: &str, rv: &str, pem: &str) -> Value {
    cm(
        namespace,
        rv,
        json!({ROOT_CERT_KEY: pem}),
        json!({MANAGED_BY_LABEL: MANAGED_BY}),
    )
}

#[test]
fn observed_reduces_configmaps() {
    let pem = "PEM";
    let of = |v: Value| Observed::of(&serde_json::from_value::<ConfigMap>(v).unwrap());
    assert_eq!(of(ours("a", "7", pem)), observed(pem));
    let extra = cm(
        "a",
        "7",
        json!({ROOT_CERT_KEY: pem, "x": "y"}),
        json!({MANAGED_BY_LABEL: MANAGED_BY}),
    );
    assert!(!of(extra).only_root_cert);
    let mut binary = ours("a", "7", pem);
    binary["binaryData"] = json!({"b": "AA=="});
    assert!(!of(binary).only_root_cert);
    assert!(
        !of(cm(
            "a",
            "7",
            json!({ROOT_CERT_KEY: pem}),
            json!({MANAGED_BY_LABEL: "helm"})
        ))
        .labelled
    );
    assert_eq!(of(cm("a", "7", json!({}), json!({}))).root_cert, None);
}

#[test]
fn plans_cover_listed_namespaces_only() {
    let pem = bundle(b"root").to_pem();
    let seen = BTreeMap::from([
        ("a".to_string(), observed(&pem)),
        ("b".to_string(), observed("old")),
        ("gone".to_string(), observed("old")),
    ]);
    let got = plan(["a", "b", "c"], &seen, &pem);
    assert_eq!(
        got,
        [
            (
                "b".to_string(),
                Action::Replace {
                    resource_version: Some("7".into())
                }
            ),
            ("c".to_string(), Action::Create),
        ]
    );
    assert!(
        plan(["c"], &seen, "").is_empty(),
        "an empty bundle is never written"
    );
}

#[test]
fn desired_configmap_is_labelled_and_holds_the_bundle() {
    let got = serde_json::to_value(desired("shop", "PEM", Some("9".into()))).unwrap();
    assert_eq!(
        got,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": CONFIGMAP_NAME, "namespace": "shop", "resourceVersion": "9",
                            "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
               "data": {ROOT_CERT_KEY: "PEM"}})
    );
}

// --- scenarios -----------------------------------------------------------------------------

fn inventory(namespaces: &[&str]) -> Arc<Inventory> {
    let mut inv = Inventory::default();
    for ns in namespaces {
        inv.namespaces.insert(
            ns.to_string(),
            Arc::new(NamespaceInfo {
                name: ns.to_string(),
                labels: BTreeMap::new(),
            }),
        );
    }
    Arc::new(inv)
}

fn respond(send: Send, code: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

/// The API server side: answers the watch, parks idle WATCH requests, hands writes out.
struct ApiServer {
    handle: Handle,
    watches: Vec<Send>,
}

struct Write {
    method: Method,
    path: String,
    query: String,
    body: Value,
    send: Send,
}

const SELECTOR: &str = "fieldSelector=metadata.name%3Dpalisade-ca-root-cert";

impl ApiServer {
    /// Expects the watcher's initial LIST and answers with `items`.
    async fn list(&mut self, items: Vec<Value>) {
        let (req, send) = self.handle.next_request().await.expect("LIST");
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().path(), "/api/v1/configmaps");
        let query = req.uri().query().unwrap_or_default();
        assert!(
            query.contains(SELECTOR) && !query.contains("watch=true"),
            "{query}"
        );
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "ConfigMapList",
            "metadata": {"resourceVersion": "100"}, "items": items}),
        );
    }

    /// The next request that is not a WATCH (those are parked for [`Self::events`]).
    async fn next(&mut self) -> Option<Write> {
        loop {
            let (req, send) = self.handle.next_request().await?;
            let query = req.uri().query().unwrap_or_default().to_string();
            if req.method() == Method::GET && query.contains("watch=true") {
                assert!(query.contains(SELECTOR), "{query}");
                self.watches.push(send);
                continue;
            }
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let body = req.into_body().collect_bytes().await.unwrap();
            return Some(Write {
                method,
                path,
                query,
                body: serde_json::from_slice(&body).expect("JSON"),
                send,
            });
        }
    }

    /// Delivers watch events (`(type, object)`) on the open WATCH.
    async fn events(&mut self, events: &[(&str, Value)]) {
        while self.watches.is_empty() {
            let (req, send) = self.handle.next_request().await.expect("WATCH");
            let query = req.uri().query().unwrap_or_default();
            assert!(
                query.contains("watch=true") && query.contains(SELECTOR),
                "{query}"
            );
            self.watches.push(send);
        }
        let mut body = Vec::new();
        for (type_, object) in events {
            body.extend(serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap());
            body.push(b'\n');
        }
        let send = self.watches.remove(0);
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(body))
                .unwrap(),
        );
    }

    /// Fails if a write arrives within `for_` (paused time: no real waiting).
    async fn silence(&mut self, for_: Duration) {
        if let Ok(Some(w)) = tokio::time::timeout(for_, self.next()).await {
            panic!("no write expected, got {} {}", w.method, w.path);
        }
    }
}

struct Scenario {
    api: ApiServer,
    inventory: watch::Sender<Arc<Inventory>>,
    bundles: watch::Sender<TrustBundle>,
    leading: watch::Sender<bool>,
    metrics: ReconcileMetrics,
    _task: JoinHandle<()>,
}

fn scenario(namespaces: &[&str], leading: bool) -> Scenario {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let metrics = ReconcileMetrics::default();
    let (inventory, inventory_rx) = watch::channel(inventory(namespaces));
    let (bundles, bundles_rx) = watch::channel(bundle(b"root-1"));
    let (leading, leading_rx) = watch::channel(leading);
    let task = spawn(
        kube::Client::new(service, "default"),
        inventory_rx,
        bundles_rx,
        leading_rx,
        metrics.clone(),
    );
    Scenario {
        api: ApiServer {
            handle,
            watches: Vec::new(),
        },
        inventory,
        bundles,
        leading,
        metrics,
        _task: task,
    }
}

fn count(metrics: &ReconcileMetrics, operation: &'static str, result: &'static str) -> u64 {
    metrics
        .configmap_writes
        .get_or_create(&ConfigMapWriteLabels { operation, result })
        .get()
}

fn pem1() -> String {
    bundle(b"root-1").to_pem()
}

fn assert_create(w: &Write, namespace: &str, pem: &str) {
    assert_eq!(w.method, Method::POST);
    assert_eq!(w.path, format!("/api/v1/namespaces/{namespace}/configmaps"));
    assert_eq!(w.query, "&fieldManager=palisade-controller");
    assert_eq!(
        w.body,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": CONFIGMAP_NAME, "namespace": namespace,
                            "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
               "data": {ROOT_CERT_KEY: pem}})
    );
}

fn assert_replace(w: &Write, namespace: &str, rv: &str, pem: &str) {
    assert_eq!(w.method, Method::PUT);
    assert_eq!(
        w.path,
        format!("/api/v1/namespaces/{namespace}/configmaps/{CONFIGMAP_NAME}")
    );
    assert_eq!(w.query, "&fieldManager=palisade-controller");
    assert_eq!(
        w.body,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": CONFIGMAP_NAME, "namespace": namespace, "resourceVersion": rv,
                            "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
               "data": {ROOT_CERT_KEY: pem}})
    );
}

#[tokio::test(start_paused = true)]
async fn creates_in_every_namespace_and_in_new_ones_at_once() {
    let mut s = scenario(&["default"], true);
    s.api.list(vec![]).await;
    let w = s.api.next().await.expect("create");
    assert_create(&w, "default", &pem1());
    respond(
        w.send,
        StatusCode::CREATED,
        &ours("default", "101", &pem1()),
    );
    // Written and remembered: nothing more, though the watch has not reported it yet.
    s.api.silence(Duration::from_secs(60)).await;

    // A namespace appears: its ConfigMap follows right away (well within 5 s).
    let started = Instant::now();
    s.inventory.send_replace(inventory(&["default", "shop"]));
    let w = s.api.next().await.expect("create");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_create(&w, "shop", &pem1());
    respond(w.send, StatusCode::CREATED, &ours("shop", "102", &pem1()));
    s.api.silence(Duration::from_secs(60)).await;
    assert_eq!(count(&s.metrics, "create", "ok"), 2);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_written_when_every_configmap_is_current() {
    let mut s = scenario(&["default", "shop"], true);
    s.api
        .list(vec![
            ours("default", "5", &pem1()),
            ours("shop", "6", &pem1()),
        ])
        .await;
    s.api.silence(Duration::from_secs(600)).await;
    // Unrelated inventory changes and our own (unchanged) objects on the watch: still nothing.
    s.inventory.send_modify(|_| {});
    s.api
        .events(&[("MODIFIED", ours("shop", "7", &pem1()))])
        .await;
    s.api.silence(Duration::from_secs(600)).await;
}

#[tokio::test(start_paused = true)]
async fn an_edit_is_replaced_and_a_deletion_recreated() {
    let mut s = scenario(&["default", "shop"], true);
    s.api
        .list(vec![
            ours("default", "5", &pem1()),
            ours("shop", "6", &pem1()),
        ])
        .await;
    // Someone edits the bundle in `shop`: restored, conditional on what was seen.
    let edited = cm(
        "shop",
        "8",
        json!({ROOT_CERT_KEY: "evil root"}),
        json!({MANAGED_BY_LABEL: MANAGED_BY}),
    );
    s.api.events(&[("MODIFIED", edited)]).await;
    let w = s.api.next().await.expect("replace");
    assert_replace(&w, "shop", "8", &pem1());
    respond(w.send, StatusCode::OK, &ours("shop", "9", &pem1()));
    // Someone deletes the one in `default`: created again.
    s.api
        .events(&[("DELETED", ours("default", "10", &pem1()))])
        .await;
    let w = s.api.next().await.expect("create");
    assert_create(&w, "default", &pem1());
    respond(w.send, StatusCode::CREATED, &ours("default", "11", &pem1()));
    s.api.silence(Duration::from_secs(60)).await;
    assert_eq!(count(&s.metrics, "replace", "ok"), 1);
    assert_eq!(count(&s.metrics, "create", "ok"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_new_bundle_replaces_every_configmap() {
    let mut s = scenario(&["default"], true);
    s.api.list(vec![ours("default", "5", &pem1())]).await;
    s.api.silence(Duration::from_secs(5)).await;
    let mut rotated = bundle(b"root-1");
    rotated
        .add(CertificateDer::from(b"root-2".to_vec()))
        .unwrap();
    let pem2 = rotated.to_pem();
    s.bundles.send_replace(rotated);
    let w = s.api.next().await.expect("replace");
    assert_replace(&w, "default", "5", &pem2);
    assert_eq!(
        pem2.matches("BEGIN CERTIFICATE").count(),
        2,
        "the whole bundle"
    );
    respond(w.send, StatusCode::OK, &ours("default", "6", &pem2));
    s.api.silence(Duration::from_secs(60)).await;
}

#[tokio::test(start_paused = true)]
async fn nothing_happens_while_not_the_leader() {
    let mut s = scenario(&["default"], false);
    // Not even the watch: no request at all.
    if let Ok(r) = tokio::time::timeout(Duration::from_secs(600), s.api.handle.next_request()).await
    {
        panic!(
            "no request expected, got {:?}",
            r.map(|(q, _)| q.uri().clone())
        );
    }
    s.bundles.send_modify(|_| {});
    s.inventory.send_replace(inventory(&["default", "shop"]));
    if let Ok(r) = tokio::time::timeout(Duration::from_secs(600), s.api.handle.next_request()).await
    {
        panic!(
            "no request expected, got {:?}",
            r.map(|(q, _)| q.uri().clone())
        );
    }
    // Leading: the watch starts and the missing ConfigMaps are created.
    s.leading.send_replace(true);
    s.api.list(vec![ours("default", "5", &pem1())]).await;
    let w = s.api.next().await.expect("create");
    assert_create(&w, "shop", &pem1());
    // Leadership lost with the write in flight: its answer changes nothing, and later events
    // write nothing.
    s.leading.send_replace(false);
    tokio::task::yield_now().await;
    respond(w.send, StatusCode::CREATED, &ours("shop", "6", &pem1()));
    s.inventory
        .send_replace(inventory(&["default", "shop", "new"]));
    s.api.silence(Duration::from_secs(600)).await;
}

#[tokio::test(start_paused = true)]
async fn a_terminating_namespace_is_retried_quietly_and_failures_back_off() {
    let mut s = scenario(&["closing", "flaky"], true);
    s.api.list(vec![]).await;
    let mut first = vec![s.api.next().await.unwrap(), s.api.next().await.unwrap()];
    first.sort_by(|a, b| a.path.cmp(&b.path));
    let [closing, flaky] = <[Write; 2]>::try_from(first).ok().unwrap();
    assert_create(&closing, "closing", &pem1());
    assert_create(&flaky, "flaky", &pem1());
    let terminating = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "Forbidden", "code": 403,
        "message": "configmaps \"palisade-ca-root-cert\" is forbidden: unable to create new content in namespace closing because it is being terminated",
        "details": {"name": CONFIGMAP_NAME, "kind": "configmaps",
                    "causes": [{"reason": "NamespaceTerminating", "message": "namespace closing is being terminated", "field": "metadata.namespace"}]}});
    respond(closing.send, StatusCode::FORBIDDEN, &terminating);
    let broken = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "InternalError", "code": 500, "message": "etcd timeout"});
    let started = Instant::now();
    respond(flaky.send, StatusCode::INTERNAL_SERVER_ERROR, &broken);
    // flaky: retried after 1 s, then 2 s.
    let again = s.api.next().await.unwrap();
    assert_create(&again, "flaky", &pem1());
    assert_eq!(started.elapsed(), FIRST_BACKOFF);
    respond(again.send, StatusCode::INTERNAL_SERVER_ERROR, &broken);
    let third = s.api.next().await.unwrap();
    assert_eq!(started.elapsed(), FIRST_BACKOFF * 3);
    respond(
        third.send,
        StatusCode::CREATED,
        &ours("flaky", "3", &pem1()),
    );
    // closing: left alone until its retry time, then the namespace is gone from the
    // inventory, and nothing is written to it again.
    s.inventory.send_replace(inventory(&["flaky"]));
    s.api.silence(TERMINATING_RETRY * 2).await;
    assert_eq!(count(&s.metrics, "create", "namespace_terminating"), 1);
    assert_eq!(count(&s.metrics, "create", "error"), 2);
    assert_eq!(count(&s.metrics, "create", "ok"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_conflicting_create_waits_for_the_watch() {
    let mut s = scenario(&["default"], true);
    s.api.list(vec![]).await;
    let w = s.api.next().await.unwrap();
    let exists = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "AlreadyExists", "code": 409, "message": "already exists"});
    respond(w.send, StatusCode::CONFLICT, &exists);
    // The watch reports the one that appeared, with an old bundle: replaced, after the short
    // conflict wait, conditional on its version.
    s.api
        .events(&[("ADDED", ours("default", "12", "stale"))])
        .await;
    let w = s.api.next().await.unwrap();
    assert_replace(&w, "default", "12", &pem1());
    respond(w.send, StatusCode::OK, &ours("default", "13", &pem1()));
    s.api.silence(Duration::from_secs(60)).await;
    assert_eq!(count(&s.metrics, "create", "conflict"), 1);
}
