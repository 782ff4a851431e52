//! tower-test scenarios: a fake API server answers the seven watchers' list and watch requests
//! (asserting path and query), and the tests read the published snapshots. Paused time: the
//! publish interval and kube-runtime's backoff pass without real waiting.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use super::*;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Send = tower_test::mock::SendResponse<Response<Body>>;

const NAMESPACES: &str = "/api/v1/namespaces";
const PODS: &str = "/api/v1/pods";
const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const PAS: &str = "/apis/security.palisade.dev/v1/peerauthentications";
const DRS: &str = "/apis/networking.palisade.dev/v1/destinationrules";
const APS: &str = "/apis/security.palisade.dev/v1/authorizationpolicies";
const ALL: [&str; 7] = [NAMESPACES, PODS, SERVICES, SLICES, PAS, DRS, APS];

/// The fake API server: requests arrive in any order across watchers, so each expectation
/// takes the first matching request and keeps the others for later.
struct FakeApi {
    handle: Handle,
    pending: Vec<(Request<Body>, Send)>,
    /// Watch requests left open (their watchers wait, as on a quiet cluster).
    held: Vec<Send>,
}

impl FakeApi {
    /// The next list (`watch = false`) or watch request on `path`; asserts its query.
    async fn expect(&mut self, path: &str, watch: bool) -> (Request<Body>, Send) {
        let matches = |r: &Request<Body>| {
            r.uri().path() == path && r.uri().query().unwrap_or("").contains("watch=true") == watch
        };
        let (request, send) = match self.pending.iter().position(|(r, _)| matches(r)) {
            Some(i) => self.pending.remove(i),
            None => loop {
                let next =
                    tokio::time::timeout(Duration::from_secs(600), self.handle.next_request())
                        .await
                        .unwrap_or_else(|_| panic!("no request for {path} (watch: {watch})"))
                        .unwrap_or_else(|| panic!("client gone waiting for {path}"));
                if matches(&next.0) {
                    break next;
                }
                self.pending.push(next);
            },
        };
        assert_eq!(request.method(), http::Method::GET);
        let query = request.uri().query().unwrap_or("").to_string();
        let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
        params.sort_unstable();
        if watch {
            // Resumes from the last version seen, bookmarks on, the server closes it in 290 s.
            let version = params
                .iter()
                .position(|p| p.starts_with("resourceVersion="))
                .map(|i| params.remove(i));
            assert!(
                version.is_some_and(|v| v.len() > "resourceVersion=".len()),
                "{query}"
            );
            assert_eq!(
                params,
                [
                    "allowWatchBookmarks=true",
                    "timeoutSeconds=290",
                    "watch=true"
                ],
                "{query}"
            );
        } else {
            // A consistent (most recent) list in pages of 500.
            assert_eq!(params, ["limit=500"], "{query}");
        }
        (request, send)
    }

    /// Answers the list of `path` with `items` at resource version `rv`.
    async fn list(&mut self, path: &str, rv: &str, items: Vec<Value>) {
        let (_, send) = self.expect(path, false).await;
        respond(send, StatusCode::OK, &list_body(rv, items));
    }

    /// Answers the next watch of `path` with `events` (type, object); the stream then ends and
    /// the watcher resumes from the last version.
    async fn watch(&mut self, path: &str, events: &[(&str, Value)]) -> String {
        let (request, send) = self.expect(path, true).await;
        let body: String = events
            .iter()
            .map(|(kind, object)| format!("{}\n", json!({"type": kind, "object": object})))
            .collect();
        send.send_response(
            Response::builder()
                .status(StatusCode::OK)
                .body(Body::from(body.into_bytes()))
                .expect("response"),
        );
        request.uri().query().unwrap_or("").to_string()
    }

    /// Holds the next watch of `path` open.
    async fn hold(&mut self, path: &str) {
        let (_, send) = self.expect(path, true).await;
        self.held.push(send);
    }

    /// Lists every kind but `except` empty and holds their watches.
    async fn quiet_except(&mut self, except: &[&str]) {
        for path in ALL.iter().filter(|p| !except.contains(p)) {
            self.list(path, "1", Vec::new()).await;
            self.hold(path).await;
        }
    }
}

fn respond(send: Send, code: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).expect("json")))
            .expect("response"),
    );
}

fn list_body(rv: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv}, "items": items})
}

fn start() -> (KubeSource, FakeApi, SourceMetrics) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let metrics = SourceMetrics::default();
    let source = KubeSource::start(client, metrics.clone());
    let api = FakeApi {
        handle,
        pending: Vec::new(),
        held: Vec::new(),
    };
    (source, api, metrics)
}

/// Waits (paused time) for a snapshot that satisfies `ready`.
async fn snapshot_where(
    rx: &mut watch::Receiver<Arc<Inventory>>,
    ready: impl Fn(&Inventory) -> bool,
) -> Arc<Inventory> {
    loop {
        {
            let current = rx.borrow_and_update();
            if ready(&current) {
                return Arc::clone(&current);
            }
        }
        tokio::time::timeout(Duration::from_secs(60), rx.changed())
            .await
            .expect("a snapshot in time")
            .expect("source alive");
    }
}

fn pod(name: &str, rv: &str, app: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "shop", "resourceVersion": rv,
            "labels": {"app": app},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
        },
        "spec": {
            "serviceAccountName": "web",
            "containers": [{
                "name": "app", "image": "example/app:1",
                "env": [{"name": "MODE", "value": "prod"}],
                "ports": [{"name": "http", "containerPort": 8080}]
            }]
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("shop", name)
}

#[tokio::test(start_paused = true)]
async fn pods_list_then_watch_events_are_published_and_deletes_remove_records() {
    let (source, mut api, metrics) = start();
    let mut rx = source.subscribe();
    api.quiet_except(&[PODS]).await;
    api.list(
        PODS,
        "5",
        vec![
            pod("a", "4", "web", "10.0.0.1"),
            pod("b", "5", "web", "10.0.0.2"),
        ],
    )
    .await;
    let first = snapshot_where(&mut rx, |i| i.pods.len() == 2).await;
    let a = &first.pods[&key("a")];
    assert_eq!(a.workload.service_account, "web");
    assert_eq!(a.workload.ports[0].port, 8080);
    assert_eq!(a.ips, vec!["10.0.0.1".parse::<IpAddr>().expect("ip")]);
    assert!(a.active);

    let mut finished = pod("b", "7", "web", "10.0.0.2");
    finished["status"]["phase"] = json!("Succeeded");
    let query = api
        .watch(
            PODS,
            &[
                ("ADDED", pod("c", "6", "db", "10.0.0.3")),
                ("MODIFIED", finished),
                ("DELETED", pod("a", "8", "web", "10.0.0.1")),
            ],
        )
        .await;
    assert!(query.contains("resourceVersion=5"), "{query}");
    let next = snapshot_where(&mut rx, |i| !i.pods.contains_key(&key("a"))).await;
    assert_eq!(next.pods.len(), 2);
    assert!(!next.pods[&key("b")].active);
    assert_eq!(next.pods[&key("c")].workload.labels["app"], "db");
    // The watcher resumes from the last event's version.
    let (request, send) = api.expect(PODS, true).await;
    assert!(
        request
            .uri()
            .query()
            .unwrap_or("")
            .contains("resourceVersion=8")
    );
    api.held.push(send);
    assert_eq!(metrics.watch_restarts_of("Pod"), 0);
}

use std::net::IpAddr;

#[tokio::test(start_paused = true)]
async fn synced_only_after_every_watcher_listed() {
    let (source, mut api, _) = start();
    let mut synced = source.synced();
    let rx = source.subscribe();
    api.quiet_except(&[DRS, APS]).await;
    // Five of seven listed: a long quiet time later, still not synced and nothing published.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!*synced.borrow_and_update());
    assert!(!rx.has_changed().expect("alive"));
    let dr = json!({
        "apiVersion": "networking.palisade.dev/v1", "kind": "DestinationRule",
        "metadata": {"name": "r", "namespace": "shop", "resourceVersion": "3", "generation": 2},
        "spec": {"host": "reviews", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}
    });
    api.list(DRS, "3", vec![dr]).await;
    // Six of seven: still not synced.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!*synced.borrow_and_update());
    let ap = json!({
        "apiVersion": "security.palisade.dev/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow-front", "namespace": "shop", "resourceVersion": "4", "generation": 3},
        "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["front"]}}]}]}
    });
    api.list(APS, "4", vec![ap]).await;
    tokio::time::timeout(Duration::from_secs(5), synced.wait_for(|s| *s))
        .await
        .expect("synced in time")
        .expect("alive");
    // The first snapshot is complete as soon as synced is true.
    let snapshot = rx.borrow().clone();
    assert_eq!(snapshot.destination_rules[&key("r")].generation, Some(2));
    let ap = &snapshot.authorization_policies[&key("allow-front")];
    assert_eq!(ap.generation, Some(3));
    assert_eq!(ap.policy.spec.rules.len(), 1);
    api.hold(DRS).await;
    api.hold(APS).await;
}

#[tokio::test(start_paused = true)]
async fn an_error_mid_watch_is_counted_backs_off_and_recovers() {
    let (source, mut api, metrics) = start();
    let mut rx = source.subscribe();
    api.quiet_except(&[SERVICES]).await;
    let service = |name: &str, rv: &str, ip: &str| {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv},
            "spec": {"selector": {"app": name}, "clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
        })
    };
    api.list(SERVICES, "2", vec![service("web", "2", "10.96.0.10")])
        .await;
    let first = snapshot_where(&mut rx, |i| i.services.len() == 1).await;
    // The watch call fails with a server error: counted, retried after a backoff.
    let (_, send) = api.expect(SERVICES, true).await;
    let started = Instant::now();
    respond(
        send,
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({"kind": "Status", "code": 500, "message": "etcd unavailable"}),
    );
    let query = api
        .watch(SERVICES, &[("ADDED", service("headless", "3", "None"))])
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert!(query.contains("resourceVersion=2"), "{query}");
    assert_eq!(metrics.watch_restarts_of("Service"), 1);
    let next = snapshot_where(&mut rx, |i| i.services.len() == 2).await;
    assert!(next.services[&key("headless")].cluster_ips.is_empty());
    // The unchanged record is shared with the previous snapshot.
    assert!(Arc::ptr_eq(
        &first.services[&key("web")],
        &next.services[&key("web")]
    ));

    // 410 Gone inside the watch: a re-list that replaces the store; unchanged records keep
    // their Arc, missing ones are removed.
    let gone = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired", "message": "too old"});
    api.watch(SERVICES, &[("ERROR", gone)]).await;
    api.list(SERVICES, "9", vec![service("web", "2", "10.96.0.10")])
        .await;
    let relisted = snapshot_where(&mut rx, |i| i.services.len() == 1).await;
    assert!(Arc::ptr_eq(
        &first.services[&key("web")],
        &relisted.services[&key("web")]
    ));
    assert_eq!(metrics.watch_restarts_of("Service"), 2);
    api.hold(SERVICES).await;
}

#[tokio::test(start_paused = true)]
async fn endpoint_slices_merge_per_service_and_deletes_remove_them() {
    let (source, mut api, _) = start();
    let mut rx = source.subscribe();
    api.quiet_except(&[SLICES]).await;
    let slice = |name: &str, rv: &str, ip: &str, ready: Option<bool>| {
        let mut endpoint = json!({"addresses": [ip], "targetRef": {"kind": "Pod", "name": format!("pod-{name}"), "namespace": "shop"}});
        if let Some(ready) = ready {
            endpoint["conditions"] = json!({"ready": ready});
        }
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv,
                         "labels": {"kubernetes.io/service-name": "web"}},
            "endpoints": [endpoint],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        })
    };
    api.list(
        SLICES,
        "4",
        vec![
            slice("web-1", "3", "10.0.0.2", None),
            slice("web-2", "4", "10.0.0.1", Some(false)),
        ],
    )
    .await;
    let merged = snapshot_where(&mut rx, |i| !i.endpoints.is_empty()).await;
    let endpoints = &merged.endpoints[&key("web")];
    let ips: Vec<String> = endpoints.iter().map(|e| e.ip.to_string()).collect();
    assert_eq!(ips, ["10.0.0.1", "10.0.0.2"]);
    assert!(!endpoints[0].ready);
    assert!(endpoints[1].ready, "absent ready condition counts as ready");
    assert_eq!(endpoints[1].pod, Some(key("pod-web-1")));
    assert_eq!(endpoints[1].ports, vec![(Some("http".to_string()), 8080)]);

    api.watch(
        SLICES,
        &[("DELETED", slice("web-2", "5", "10.0.0.1", Some(false)))],
    )
    .await;
    let after = snapshot_where(&mut rx, |i| {
        i.endpoints.get(&key("web")).is_some_and(|e| e.len() == 1)
    })
    .await;
    assert_eq!(after.endpoints[&key("web")][0].ip.to_string(), "10.0.0.2");
    api.watch(
        SLICES,
        &[("DELETED", slice("web-1", "6", "10.0.0.2", None))],
    )
    .await;
    snapshot_where(&mut rx, |i| i.endpoints.is_empty()).await;
    api.hold(SLICES).await;
}

#[tokio::test(start_paused = true)]
async fn namespaces_and_policies_keep_labels_generation_and_status() {
    let (source, mut api, _) = start();
    let mut rx = source.subscribe();
    api.quiet_except(&[NAMESPACES, PAS]).await;
    api.list(
        NAMESPACES,
        "2",
        vec![json!({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": "shop", "resourceVersion": "2", "labels": {"palisade.dev/inject": "enabled"}}})],
    )
    .await;
    api.hold(NAMESPACES).await;
    let status = json!({"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "in force"}], "observedGeneration": 3});
    let pa = |rv: &str, generation: i64, mode: &str| {
        json!({
            "apiVersion": "security.palisade.dev/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "strict", "namespace": "shop", "resourceVersion": rv, "generation": generation,
                         "creationTimestamp": "2025-01-02T03:04:05Z"},
            "spec": {"mtls": {"mode": mode}},
            "status": status
        })
    };
    api.list(PAS, "7", vec![pa("7", 3, "STRICT")]).await;
    let first = snapshot_where(&mut rx, |i| !i.peer_authentications.is_empty()).await;
    assert_eq!(
        first.namespaces["shop"].labels["palisade.dev/inject"],
        "enabled"
    );
    let record = &first.peer_authentications[&key("strict")];
    assert_eq!(record.generation, Some(3));
    assert_eq!(
        record.status.as_ref().and_then(|s| s.observed_generation),
        Some(3)
    );
    assert!(record.policy.meta.creation_timestamp.is_some());

    api.watch(PAS, &[("MODIFIED", pa("8", 4, "PERMISSIVE"))])
        .await;
    let next = snapshot_where(&mut rx, |i| {
        i.peer_authentications[&key("strict")].generation == Some(4)
    })
    .await;
    assert_eq!(
        next.peer_authentications[&key("strict")]
            .policy
            .spec
            .mtls
            .as_ref()
            .and_then(|m| m.mode),
        Some(crate::api::MtlsMode::Permissive)
    );
    assert!(Arc::ptr_eq(
        &first.namespaces["shop"],
        &next.namespaces["shop"]
    ));
    api.hold(PAS).await;
}

#[tokio::test(start_paused = true)]
async fn changes_are_coalesced_and_the_last_one_is_never_dropped() {
    let (source, mut api, _) = start();
    let mut rx = source.subscribe();
    api.quiet_except(&[PODS]).await;
    api.list(PODS, "1", Vec::new()).await;
    snapshot_where(&mut rx, |_| true).await;
    let mut synced = source.synced();
    synced.wait_for(|s| *s).await.expect("synced");
    rx.mark_unchanged();
    // Ten events in one watch response: far fewer snapshots than events, the last one in.
    let events: Vec<(&str, Value)> = (0..10)
        .map(|n| {
            (
                "ADDED",
                pod(
                    &format!("p{n}"),
                    &format!("{}", n + 2),
                    "web",
                    &format!("10.0.1.{n}"),
                ),
            )
        })
        .collect();
    api.watch(PODS, &events).await;
    let mut snapshots = 0;
    loop {
        tokio::time::timeout(Duration::from_secs(60), rx.changed())
            .await
            .expect("a snapshot")
            .expect("alive");
        snapshots += 1;
        if rx.borrow_and_update().pods.len() == 10 {
            break;
        }
    }
    assert!(snapshots <= 2, "{snapshots} snapshots for one burst");
    api.hold(PODS).await;
}

/// The heap a pod record holds (strings and collections by capacity, map nodes estimated).
fn record_heap_bytes(record: &PodRecord) -> usize {
    const MAP_ENTRY_OVERHEAD: usize = 64;
    let w = &record.workload;
    w.namespace.capacity()
        + w.name.capacity()
        + w.service_account.capacity()
        + w.labels
            .iter()
            .map(|(k, v)| k.capacity() + v.capacity() + MAP_ENTRY_OVERHEAD)
            .sum::<usize>()
        + w.ports.capacity() * std::mem::size_of::<crate::policy::WorkloadPort>()
        + w.ports
            .iter()
            .map(|p| p.name.as_ref().map_or(0, String::capacity))
            .sum::<usize>()
        + record.ips.capacity() * std::mem::size_of::<IpAddr>()
        + std::mem::size_of::<PodRecord>()
}

#[test]
fn ten_thousand_pod_records_stay_small() {
    let mut object = pod("web-7d9f8c6b5-x2x4z", "123456", "web", "10.0.3.17");
    object["metadata"]["labels"] = json!({"app": "web", "pod-template-hash": "7d9f8c6b5", "security.palisade.dev/tlsMode": "palisade"});
    object["metadata"]["annotations"]["sidecar.palisade.dev/status"] = json!(
        "{\"initContainers\":[\"palisade-init\",\"palisade-proxy\"],\"volumes\":[\"palisade-token\",\"palisade-ca-root\"]}"
    );
    object["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}});
    object["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]);
    object["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}]);
    object["status"]["conditions"] = json!([
        {"type": "Initialized", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"},
        {"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:05Z"},
        {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2025-01-01T00:00:05Z"},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}
    ]);
    // What every pod of a real cluster carries besides: probes, volumes, tolerations and
    // container statuses (all dropped by the record).
    object["spec"]["containers"][0]["readinessProbe"] =
        json!({"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5});
    object["spec"]["volumes"] = json!([{"name": "kube-api-access-abcde", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}, {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}]);
    object["spec"]["tolerations"] = json!([{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]);
    object["spec"]["nodeName"] = json!("worker-17");
    object["status"]["containerStatuses"] = json!([{"name": "app", "ready": true, "restartCount": 0, "image": "example/app:1", "imageID": "example/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "containerID": "containerd://0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "started": true, "state": {"running": {"startedAt": "2025-01-01T00:00:04Z"}}}]);
    let json_bytes = serde_json::to_vec(&object).expect("json").len();
    let pod: Pod = serde_json::from_value(object).expect("pod");
    let (_, record) = kube_records::pod_record(&pod).expect("record");
    let per_record = record_heap_bytes(&record);
    let total = per_record * 10_000;
    eprintln!(
        "pod JSON: {json_bytes} B; record: about {per_record} B; 10,000 records: about {} KiB",
        total / 1024
    );
    // Far below the objects themselves (a real pod's JSON is larger still: more status,
    // probes, volumes), and a few MiB for a 10,000-pod cluster.
    assert!(
        per_record * 3 < json_bytes,
        "{per_record} B vs {json_bytes} B of JSON"
    );
    assert!(total < 8 * 1024 * 1024, "{total} B");
}
