//! The webhook over real HTTPS: the standalone control plane serves it with a certificate
//! from its own CA; a hyper client that trusts only `root-cert.pem` posts AdmissionReview JSON
//! shaped like the API server's, over HTTP/2 and HTTP/1.1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use palisade::server::{self, Config, Running};
use palisade::webhook::InjectionConfig;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

use crate::support;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub async fn start_standalone(dir: &Path) -> Running {
    let labels = BTreeMap::from([("palisade.dev/inject".to_string(), "enabled".to_string())]);
    let config = Config {
        injection: InjectionConfig {
            image: "registry.example/palisade:test".into(),
            namespace_labels: BTreeMap::from([("shop".to_string(), labels)]),
            ..InjectionConfig::default()
        },
        ..support::standalone_config(dir)
    };
    server::start(config)
        .await
        .expect("standalone control plane starts")
}

fn roots(pem: &str) -> rustls::RootCertStore {
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        store
            .add(cert.expect("root PEM"))
            .expect("root certificate");
    }
    store
}

fn client_tls(root_pem: &str) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots(root_pem))
        .with_no_client_auth()
}

/// A keep-alive HTTPS client trusting only `root_pem`, offering HTTP/2, HTTP/1.1 or both.
pub fn https_client(root_pem: &str, h2: bool, h1: bool) -> HttpsClient {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls(root_pem))
        .https_only();
    let connector = match (h2, h1) {
        (true, true) => builder.enable_all_versions().build(),
        (true, false) => builder.enable_http2().build(),
        _ => builder.enable_http1().build(),
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Sends one request; returns status, HTTP version and body.
pub async fn send(
    client: &HttpsClient,
    method: Method,
    url: &str,
    body: Vec<u8>,
) -> (StatusCode, Version, Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = client.request(req).await.expect("HTTPS request");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("response body").to_bytes();
    (parts.status, parts.version, bytes)
}

fn review_fixture() -> Value {
    let text = std::fs::read_to_string(support::fixture("webhook/admission-review.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn response_of(body: &[u8]) -> Value {
    let review: Value = serde_json::from_slice(body).expect("AdmissionReview JSON");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    review["response"].clone()
}

/// Decodes the base64 JSONPatch of `response` and applies it to `object`.
pub fn apply_response_patch(response: &Value, object: &Value) -> Pod {
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(
            response["patch"]
                .as_str()
                .expect("patch is a base64 string"),
        )
        .expect("patch is base64");
    let ops: Vec<json_patch::PatchOperation> =
        serde_json::from_slice(&patch).expect("patch is a JSONPatch");
    let mut doc = object.clone();
    json_patch::patch(&mut doc, &ops).expect("patch applies to the object sent");
    serde_json::from_value(doc).expect("patched object is a Pod")
}

#[tokio::test]
async fn injects_over_h2_and_http1_trusting_only_the_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_standalone(dir.path()).await;
    let root = std::fs::read_to_string(dir.path().join(server::ROOT_CERT_FILE)).unwrap();
    let url = format!("https://localhost:{}/inject", running.webhook_addr.port());
    let review = review_fixture();
    for (h2, h1, version) in [
        (true, false, Version::HTTP_2),
        (false, true, Version::HTTP_11),
        (true, true, Version::HTTP_2),
    ] {
        let client = https_client(&root, h2, h1);
        let (status, got, body) = send(
            &client,
            Method::POST,
            &url,
            serde_json::to_vec(&review).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(got, version);
        let response = response_of(&body);
        assert_eq!(response["uid"], review["request"]["uid"]);
        assert_eq!(response["allowed"], true);
        let pod = apply_response_patch(&response, &review["request"]["object"]);
        let spec = pod.spec.unwrap();
        let inits: Vec<String> = spec
            .init_containers
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(inits, ["palisade-init", "palisade-proxy"]);
        let probe = spec.containers[0].readiness_probe.clone().unwrap();
        assert_eq!(
            probe.http_get.unwrap().path.as_deref(),
            Some("/app-health/web/readyz")
        );
        // The API server's own token volume is kept, ours appended.
        let volumes: Vec<String> = spec.volumes.unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(volumes[0], "kube-api-access-7xq2m");
        assert_eq!(volumes.len(), 4);
    }
    // A client that does not trust our CA cannot talk to the webhook.
    let (_, other_root) = palisade::ca::authority::generate_root(SystemTime::now()).unwrap();
    let stranger = https_client(&other_root, true, true);
    let req = Request::post(&url).body(Full::new(Bytes::new())).unwrap();
    assert!(stranger.request(req).await.is_err());
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_answered_not_crashed() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_standalone(dir.path()).await;
    let root = std::fs::read_to_string(dir.path().join(server::ROOT_CERT_FILE)).unwrap();
    let client = https_client(&root, true, true);
    let url = format!("https://localhost:{}/inject", running.webhook_addr.port());

    let (status, _, body) = send(&client, Method::POST, &url, b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("not AdmissionReview JSON"));
    let huge = vec![b' '; palisade::webhook::server::MAX_BODY_BYTES + 1];
    let (status, _, _) = send(&client, Method::POST, &url, huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _, _) = send(&client, Method::GET, &url, Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Not enabled: admitted unchanged.
    let mut review = review_fixture();
    review["request"]["namespace"] = json!("other");
    let (status, _, body) = send(
        &client,
        Method::POST,
        &url,
        serde_json::to_vec(&review).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let response = response_of(&body);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());

    // A bad annotation: denied, and the message names it.
    let mut review = review_fixture();
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"traffic.palisade.dev/excludeInboundPorts": "ssh"});
    let (_, _, body) = send(
        &client,
        Method::POST,
        &url,
        serde_json::to_vec(&review).unwrap(),
    )
    .await;
    let response = response_of(&body);
    assert_eq!(response["allowed"], false);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("traffic.palisade.dev/excludeInboundPorts")
    );

    // An object that is not a Pod: denied with a reason (the uid is still answered).
    let mut review = review_fixture();
    review["request"]["object"]["spec"]["containers"] = json!("web");
    let (_, _, body) = send(
        &client,
        Method::POST,
        &url,
        serde_json::to_vec(&review).unwrap(),
    )
    .await;
    let response = response_of(&body);
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], false);

    // dryRun gets the same answer (nothing to skip: the webhook has no side effects).
    let mut review = review_fixture();
    review["request"]["dryRun"] = json!(true);
    let (_, _, body) = send(
        &client,
        Method::POST,
        &url,
        serde_json::to_vec(&review).unwrap(),
    )
    .await;
    assert_eq!(response_of(&body)["patchType"], "JSONPatch");

    let metrics = running.metrics.encode();
    for needle in [
        "palisade_webhook_injections_total{result=\"injected\",reason=\"\"} 1",
        "palisade_webhook_injections_total{result=\"skipped\",reason=\"not_enabled\"} 1",
        "palisade_webhook_injections_total{result=\"denied\",reason=\"\"} 1",
        "palisade_webhook_injections_total{result=\"error\",reason=\"\"} 2",
        "palisade_webhook_request_duration_seconds_count",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
    running.shutdown().await.unwrap();
}

mod reload {
    use super::*;
    use palisade::ca::serving::{self, ServingResolver, ServingSpec};
    use palisade::ca::{Authority, IssuancePolicy, SigningCa, TrustBundle};
    use palisade::metrics::Metrics;
    use palisade::webhook::namespaces::StaticNamespaces;
    use palisade::webhook::server::Injector;
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;

    /// An in-memory CA (no state directory).
    pub fn authority() -> Arc<Authority> {
        let (key, cert) = palisade::ca::authority::generate_root(SystemTime::now()).unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let signing = SigningCa::new(&key, der.clone(), vec![]).unwrap();
        Arc::new(Authority::new(
            signing,
            TrustBundle::new(der),
            IssuancePolicy::default(),
            Metrics::new().ca,
        ))
    }

    /// Opens a TLS connection; returns it with the leaf certificate the server presented.
    async fn connect(
        addr: SocketAddr,
        root_pem: &str,
    ) -> (
        tokio_rustls::client::TlsStream<TcpStream>,
        CertificateDer<'static>,
    ) {
        let mut config = client_tls(root_pem);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        (tls, leaf)
    }

    async fn healthz(
        sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    ) -> StatusCode {
        let req = Request::get("/healthz")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender
            .send_request(req)
            .await
            .expect("request on the open connection")
            .status()
    }

    #[tokio::test]
    async fn renewed_certificate_is_served_without_dropping_connections() {
        palisade::server::install_crypto_provider();
        let authority = authority();
        let spec = ServingSpec::for_service("palisade", "palisade-system", true);
        let first = serving::issue(&authority, &spec).unwrap();
        let (tx, rx) = tokio::sync::watch::channel(first.key.clone());
        let injector = Injector {
            config: Arc::new(InjectionConfig::default()),
            namespaces: Arc::new(StaticNamespaces::default()),
            metrics: Default::default(),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr, task) = palisade::webhook::server::start(
            support::loopback(),
            Arc::new(ServingResolver::new(rx)),
            injector,
            async move {
                let _ = stop_rx.await;
            },
        )
        .await
        .unwrap();
        let root = authority.trust_bundle().to_pem();

        let (old_tls, old_leaf) = connect(addr, &root).await;
        assert_eq!(old_leaf, first.key.cert[0]);
        let (mut old, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(old_tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        assert_eq!(healthz(&mut old).await, StatusCode::OK);

        // Renewal: the next handshake gets the new certificate...
        let second = serving::issue(&authority, &spec).unwrap();
        assert_ne!(second.key.cert[0], first.key.cert[0]);
        tx.send_replace(second.key.clone());
        let (_new_tls, new_leaf) = connect(addr, &root).await;
        assert_eq!(new_leaf, second.key.cert[0]);
        // ...and the connection opened before it keeps working.
        assert_eq!(healthz(&mut old).await, StatusCode::OK);

        stop_tx.send(()).unwrap();
        drop(old);
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed() {
        palisade::server::install_crypto_provider();
        let authority = authority();
        let spec = ServingSpec::for_service("palisade", "palisade-system", true);
        let cert = serving::issue(&authority, &spec).unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(cert.key);
        let tls = palisade::net::tls::server_config(
            Arc::new(ServingResolver::new(rx)),
            None,
            &palisade::webhook::server::ALPN,
        )
        .unwrap();
        let injector = Injector {
            config: Arc::new(InjectionConfig::default()),
            namespaces: Arc::new(StaticNamespaces::default()),
            metrics: Default::default(),
        };
        let (listener, addr) = palisade::net::bind(support::loopback(), "webhook listener")
            .await
            .unwrap();
        let router = palisade::webhook::server::router(Arc::new(injector));
        let _task = palisade::webhook::server::serve_bounded(
            listener,
            Arc::new(tls),
            router,
            std::future::pending(),
            1,
        );
        let root = authority.trust_bundle().to_pem();
        let open = |tls| async move {
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender
        };
        let (first, _) = connect(addr, &root).await;
        let mut first = open(first).await;
        assert_eq!(healthz(&mut first).await, StatusCode::OK);
        // The second connection is accepted by TLS but closed before any request is served.
        let (second, _) = connect(addr, &root).await;
        let mut second = open(second).await;
        let req = Request::get("/healthz")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert!(second.send_request(req).await.is_err());
        // Once the first goes away, a new connection is served again.
        drop(first);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (third, _) = connect(addr, &root).await;
            let mut third = open(third).await;
            let req = Request::get("/healthz")
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap();
            if let Ok(resp) = third.send_request(req).await {
                assert_eq!(resp.status(), StatusCode::OK);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "slot never freed");
        }
    }
}

mod controller_flags {
    use clap::Parser as _;
    use palisade::cli::{Cli, Command};

    fn config(args: &[&str]) -> anyhow::Result<palisade::server::Config> {
        let mut argv = vec!["palisade", "controller"];
        argv.extend(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Controller(args) => args.to_config(),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn standalone_reads_injection_yaml_from_the_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (state, conf) = (dir.path().join("state"), dir.path().join("config"));
        std::fs::create_dir_all(&conf).unwrap();
        let (s, c) = (state.to_str().unwrap(), conf.to_str().unwrap());
        let base = ["--standalone", "--state-dir", s, "--config-dir", c];

        // No file: defaults, with the controller's namespace and CA address.
        let cfg = config(&[&base[..], &["--namespace", "mesh"]].concat()).unwrap();
        assert_eq!(cfg.injection.control_plane_namespace, "mesh");
        assert_eq!(cfg.injection.ca_address, "palisade.mesh.svc:15012");

        std::fs::write(
            conf.join("injection.yaml"),
            "image: local/palisade:dev\nnamespaceLabels:\n  shop:\n    palisade.dev/inject: enabled\n",
        )
        .unwrap();
        let cfg = config(&base).unwrap();
        assert_eq!(cfg.injection.image, "local/palisade:dev");
        assert_eq!(
            cfg.injection.namespace_labels["shop"]["palisade.dev/inject"],
            "enabled"
        );
        // The flag wins over the file.
        let cfg = config(&[&base[..], &["--proxy-image", "other/palisade:1"]].concat()).unwrap();
        assert_eq!(cfg.injection.image, "other/palisade:1");

        // A broken file stops the controller with a message naming it.
        std::fs::write(conf.join("injection.yaml"), "imagePullPolicy: Sometimes\n").unwrap();
        let err = format!("{:#}", config(&base).unwrap_err());
        assert!(err.contains("imagePullPolicy"), "{err}");
    }

    #[test]
    fn certificate_renewal_is_opt_in_and_grpc_connections_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let (s, c) = (dir.path().join("state"), dir.path().join("config"));
        let (s, c) = (s.to_str().unwrap(), c.to_str().unwrap());
        let base = ["--standalone", "--state-dir", s, "--config-dir", c];
        let cfg = config(&base).unwrap();
        assert!(!cfg.allow_certificate_renewal);
        assert!(cfg.max_grpc_connections > 10_000, "room for 10,000 proxies");
        let flags = [
            "--allow-certificate-renewal",
            "--max-grpc-connections",
            "100",
        ];
        let cfg = config(&[&base[..], &flags].concat()).unwrap();
        assert!(cfg.allow_certificate_renewal);
        assert_eq!(cfg.max_grpc_connections, 100);
        for bad in ["0", "-1", "many"] {
            let flags = ["--max-grpc-connections", bad];
            assert!(config(&[&base[..], &flags].concat()).is_err(), "{bad}");
        }
    }
}
