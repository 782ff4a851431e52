//! In-cluster mode against a mocked API server (tower-test): the control plane looks for the
//! plug-in CA Secret, creates the self-signed root in Secret `palisade-ca`, and authenticates a
//! CSR with a TokenReview carrying the caller's token and the `palisade-ca` audience. The
//! replica wins the leader Lease before it touches the webhook configuration, and releases the
//! Lease on shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use palisade::server::{self, Config};
use palisade::xds::proto::istio_v1_auth::IstioCertificateRequest;
use palisade::xds::proto::istio_v1_auth::istio_certificate_service_client::IstioCertificateServiceClient;
use serde_json::{Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// What the fake API server saw, in order: "VERB path".
type Log = Arc<Mutex<Vec<String>>>;

fn reply(code: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap();
    Response::builder()
        .status(code)
        .body(Body::from(bytes))
        .unwrap()
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/palisade-system/leases";
const WEBHOOK_CONFIGURATION: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/palisade-sidecar-injector";

/// Collections the control plane lists and watches in a cluster.
const WATCHED: [&str; 8] = [
    "/api/v1/namespaces",
    "/api/v1/pods",
    "/api/v1/services",
    "/api/v1/configmaps",
    "/apis/discovery.k8s.io/v1/endpointslices",
    "/apis/security.palisade.dev/v1/peerauthentications",
    "/apis/networking.palisade.dev/v1/destinationrules",
    "/apis/security.palisade.dev/v1/authorizationpolicies",
];

/// A minimal API server: empty lists (and silent watches) of the watched collections, Secrets (get/create), TokenReviews ("good-token" is default/web), and
/// the leader Lease (get/create/update, optimistic concurrency). Lease writes go to `leases`.
async fn api_server(
    mut handle: Handle,
    log: Log,
    reviews: Arc<Mutex<Vec<Value>>>,
    leases: Arc<Mutex<Vec<Value>>>,
) {
    let mut stored: Option<Value> = None;
    let mut lease: Option<Value> = None;
    let lease_path = format!("{LEASES}/palisade-controller-leader");
    // Watch requests are held open (never answered) until the test ends, as an API server
    // with nothing to report would.
    let mut parked_watches = Vec::new();
    while let Some((req, send)) = handle.next_request().await {
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let query = req.uri().query().unwrap_or_default().to_string();
        if method == Method::GET && WATCHED.contains(&path.as_str()) {
            // The inventory's watchers (and the ConfigMap reconciler's): empty lists.
            if query.contains("watch=true") {
                parked_watches.push(send);
            } else {
                log.lock().unwrap().push(format!("LIST {path}"));
                let empty = json!({"apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": "1"}, "items": []});
                send.send_response(reply(StatusCode::OK, &empty));
            }
            continue;
        }
        log.lock().unwrap().push(format!("{method} {path}"));
        let body: Value = serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap())
            .unwrap_or(Value::Null);
        let secrets = "/api/v1/namespaces/palisade-system/secrets";
        let response = match (method, path.as_str()) {
            (Method::GET, p) if p == format!("{secrets}/cacerts") => {
                reply(StatusCode::NOT_FOUND, &not_found())
            }
            (Method::GET, p) if p == format!("{secrets}/palisade-ca") => match &stored {
                Some(s) => reply(StatusCode::OK, s),
                None => reply(StatusCode::NOT_FOUND, &not_found()),
            },
            (Method::POST, p) if p == secrets => {
                let mut created = body;
                created["metadata"]["resourceVersion"] = json!("1");
                created["metadata"]["namespace"] = json!("palisade-system");
                stored = Some(created.clone());
                reply(StatusCode::CREATED, &created)
            }
            (Method::POST, "/apis/authentication.k8s.io/v1/tokenreviews") => {
                reviews.lock().unwrap().push(body["spec"].clone());
                let ok = body["spec"]["token"] == "good-token";
                let status = if ok {
                    json!({"authenticated": true, "audiences": ["palisade-ca"],
                           "user": {"username": "system:serviceaccount:default:web"}})
                } else {
                    json!({"authenticated": false, "error": "invalid bearer token"})
                };
                let mut answer = body;
                answer["status"] = status;
                reply(StatusCode::CREATED, &answer)
            }
            // The webhook's caBundle sync runs in cluster mode too; not installed here.
            (Method::GET, WEBHOOK_CONFIGURATION) => reply(StatusCode::NOT_FOUND, &not_found()),
            (Method::GET, p) if p == lease_path => match &lease {
                Some(l) => reply(StatusCode::OK, l),
                None => reply(StatusCode::NOT_FOUND, &not_found()),
            },
            (Method::POST, LEASES) if lease.is_none() => {
                leases.lock().unwrap().push(body.clone());
                let mut created = body;
                created["metadata"]["resourceVersion"] = json!("1");
                lease = Some(created.clone());
                reply(StatusCode::CREATED, &created)
            }
            (Method::PUT, p) if p == lease_path => {
                leases.lock().unwrap().push(body.clone());
                let current = lease
                    .as_ref()
                    .map(|l| l["metadata"]["resourceVersion"].clone());
                if current.as_ref() != Some(&body["metadata"]["resourceVersion"]) {
                    let conflict = json!({"kind": "Status", "apiVersion": "v1",
                        "status": "Failure", "reason": "Conflict", "code": 409});
                    reply(StatusCode::CONFLICT, &conflict)
                } else {
                    let version: u64 = body["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap();
                    let mut updated = body;
                    updated["metadata"]["resourceVersion"] = json!((version + 1).to_string());
                    lease = Some(updated.clone());
                    reply(StatusCode::OK, &updated)
                }
            }
            (m, p) => panic!("unexpected request {m} {p}"),
        };
        send.send_response(response);
    }
}

#[tokio::test]
async fn in_cluster_mode_creates_the_root_secret_and_uses_token_review() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let (log, reviews) = (Log::default(), Arc::new(Mutex::new(Vec::new())));
    let leases = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(api_server(
        handle,
        log.clone(),
        reviews.clone(),
        leases.clone(),
    ));

    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = Config {
        grpc_addr: loopback,
        webhook_addr: loopback,
        monitor_addr: loopback,
        ..Config::default()
    };
    let running = server::start_with_client(config, Some(client))
        .await
        .unwrap();
    let secret_calls: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|call| call.contains("/secrets"))
        .cloned()
        .collect();
    assert_eq!(
        secret_calls,
        [
            "GET /api/v1/namespaces/palisade-system/secrets/cacerts",
            "GET /api/v1/namespaces/palisade-system/secrets/palisade-ca",
            "POST /api/v1/namespaces/palisade-system/secrets",
        ]
    );

    let root = running.authority.trust_bundle().to_pem();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&root))
        .domain_name("palisade.palisade-system.svc");
    let channel = Channel::from_shared(format!("https://{}", running.grpc_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let mut ca = IstioCertificateServiceClient::new(channel.connect().await.unwrap());
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let call = |token: &'static str| {
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: csr.clone(),
            validity_duration: 0,
            metadata: None,
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    };
    let chain = ca
        .create_certificate(call("good-token"))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], root);
    // Cached: the second call makes no TokenReview.
    ca.create_certificate(call("good-token")).await.unwrap();
    let denied = ca
        .create_certificate(call("stolen-token"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        *reviews.lock().unwrap(),
        [
            json!({"token": "good-token", "audiences": ["palisade-ca"]}),
            json!({"token": "stolen-token", "audiences": ["palisade-ca"]}),
        ]
    );

    // The caBundle sync started once this replica held the Lease, not before.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let webhook_get = format!("GET {WEBHOOK_CONFIGURATION}");
    let position = |call: &str| log.lock().unwrap().iter().position(|c| c == call);
    while position(&webhook_get).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no caBundle check within 10 s: {:?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let lease_get = format!("GET {LEASES}/palisade-controller-leader");
    let lease_calls: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|call| call.contains("/leases"))
        .take(2)
        .cloned()
        .collect();
    assert_eq!(lease_calls, [lease_get, format!("POST {LEASES}")]);
    assert!(position(&format!("POST {LEASES}")) < position(&webhook_get));

    // Every inventory watcher listed once (and the trust-bundle ConfigMaps were listed by the
    // leader's reconciler).
    for path in WATCHED {
        let listed = format!("LIST {path}");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while position(&listed).is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{listed} missing: {:?}",
                log.lock().unwrap()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    running.shutdown().await.unwrap();
    // Released on the way out: the other replica need not wait out the lease duration.
    let leases = leases.lock().unwrap();
    let (created, released) = (leases.first().unwrap(), leases.last().unwrap());
    let holder = created["spec"]["holderIdentity"].as_str().unwrap();
    assert!(!holder.is_empty());
    assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(released["spec"]["holderIdentity"], "");
    assert_eq!(
        log.lock().unwrap().last().map(String::as_str),
        Some(format!("PUT {LEASES}/palisade-controller-leader").as_str())
    );
}
