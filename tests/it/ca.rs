//! The standalone control plane end to end: a real tonic client over TLS (generated from the
//! same proto) drives CreateCertificate and checks the chain against `root-cert.pem`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use palisade::auth::Identity;
use palisade::auth::jwt::LocalJwtKey;
use palisade::server::{self, Running};
use palisade::xds::proto::istio_v1_auth::IstioCertificateRequest;
use palisade::xds::proto::istio_v1_auth::istio_certificate_service_client::IstioCertificateServiceClient;
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::support;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

async fn start(dir: &Path) -> Running {
    let config = support::standalone_config(dir);
    server::start(config)
        .await
        .expect("standalone control plane starts")
}

fn root_pem(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(server::ROOT_CERT_FILE)).expect("root-cert.pem written")
}

async fn client(
    running: &Running,
    dir: &Path,
    identity: Option<(String, String)>,
) -> IstioCertificateServiceClient<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem(dir)))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{}", running.grpc_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connection to the CA");
    IstioCertificateServiceClient::new(channel)
}

fn csr() -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (key, csr)
}

fn request(csr: &str, ttl: i64, token: Option<&str>) -> tonic::Request<IstioCertificateRequest> {
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_string(),
        validity_duration: ttl,
        metadata: None,
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

fn token(dir: &Path, ns: &str, sa: &str, audience: &str) -> String {
    let key = LocalJwtKey::load_or_create(dir).unwrap();
    let id = Identity::new(ns, sa).unwrap();
    key.issue(&id, audience, Duration::from_secs(600), SystemTime::now())
        .unwrap()
}

/// Verifies `chain` (leaf first) against the roots in `root_pem` the way a peer proxy would:
/// webpki, as a client certificate.
fn verify_chain(chain: &[String], root_pem: &str) {
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(root_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let mut store = rustls::RootCertStore::empty();
    store.add_parsable_certificates(roots);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
            .build()
            .unwrap();
    let certs: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).unwrap())
        .collect();
    verifier
        .verify_client_cert(&certs[0], &certs[1..], UnixTime::now())
        .expect("chain verifies");
}

fn spiffe_of(leaf_pem: &str) -> String {
    let der = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    match &san.value.general_names[..] {
        [x509_parser::extensions::GeneralName::URI(u)] => u.to_string(),
        other => panic!("unexpected SANs {other:?}"),
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn token_authenticated_issuance_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let mut ca = client(&running, dir.path(), None).await;
    let (_key, csr) = csr();
    let tok = token(dir.path(), "shop", "checkout", "palisade-ca");
    let chain = ca
        .create_certificate(request(&csr, 0, Some(&tok)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(chain.cert_chain.len(), 2, "leaf then root");
    assert_eq!(
        chain.cert_chain[1],
        root_pem(dir.path()),
        "root last, as in root-cert.pem"
    );
    verify_chain(&chain.cert_chain, &root_pem(dir.path()));
    assert_eq!(
        spiffe_of(&chain.cert_chain[0]),
        "spiffe://cluster.local/ns/shop/sa/checkout"
    );

    let metrics = http_get(running.monitor_addr, "/metrics").await;
    assert!(
        metrics.contains("palisade_ca_certs_issued_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("palisade_ca_root_cert_expiry_timestamp_seconds"));
    assert!(metrics.contains("palisade_ca_serving_cert_expiry_timestamp_seconds"));
    assert!(
        http_get(running.monitor_addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        http_get(running.monitor_addr, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn missing_and_bad_credentials_are_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let mut ca = client(&running, dir.path(), None).await;
    let (_key, csr) = csr();
    let other_dir = tempfile::tempdir().unwrap();
    let cases = [
        ("no token", None),
        ("garbage", Some("garbage".to_string())),
        (
            "wrong audience",
            Some(token(dir.path(), "a", "b", "kubernetes")),
        ),
        (
            "foreign key",
            Some(token(other_dir.path(), "a", "b", "palisade-ca")),
        ),
        ("oversize token", Some("x".repeat(20 * 1024))),
    ];
    for (what, tok) in cases {
        let status = ca
            .create_certificate(request(&csr, 0, tok.as_deref()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert_eq!(
            status.message(),
            "unauthenticated",
            "{what}: say nothing more"
        );
    }
    let metrics = http_get(running.monitor_addr, "/metrics").await;
    assert!(
        metrics.contains("palisade_ca_certs_refused_total{reason=\"unauthenticated\"} 5"),
        "{metrics}"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_requests_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let mut ca = client(&running, dir.path(), None).await;
    let tok = token(dir.path(), "a", "b", "palisade-ca");
    let (_key, csr) = csr();
    let over_max = 90 * 24 * 3600 + 1;
    for (what, csr, ttl) in [
        ("ttl over max", csr.as_str(), over_max),
        ("negative ttl", csr.as_str(), -1),
        (
            "malformed csr",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            0,
        ),
    ] {
        let status = ca
            .create_certificate(request(csr, ttl, Some(&tok)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    // Over the message bound: refused by the server before any parsing.
    let huge = "A".repeat(200 * 1024);
    let status = ca
        .create_certificate(request(&huge, 0, Some(&tok)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    running.shutdown().await.unwrap();
}

fn lifetime_of(leaf_pem: &str) -> Duration {
    let der = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let v = cert.validity();
    Duration::from_secs((v.not_after.timestamp() - v.not_before.timestamp()) as u64)
}

/// Renewal with a workload certificate over real mTLS: refused unless enabled, and when enabled
/// a request for 90 days gets at most the default TTL (plus the 2-minute backdate).
#[tokio::test]
async fn renewal_with_a_workload_certificate() {
    const NINETY_DAYS: i64 = 90 * 24 * 3600;
    for enabled in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let config = palisade::server::Config {
            allow_certificate_renewal: enabled,
            ..support::standalone_config(dir.path())
        };
        let running = server::start(config).await.unwrap();
        let mut ca = client(&running, dir.path(), None).await;
        let (key, first_csr) = csr();
        let tok = token(dir.path(), "shop", "cart", "palisade-ca");
        let first = ca
            .create_certificate(request(&first_csr, 3600, Some(&tok)))
            .await
            .unwrap();
        let leaf = first.into_inner().cert_chain.remove(0);

        // Present the issued certificate over mTLS, no token.
        let mut renewing = client(&running, dir.path(), Some((leaf, key.serialize_pem()))).await;
        let (_new_key, new_csr) = csr();
        let renewed = renewing
            .create_certificate(request(&new_csr, NINETY_DAYS, None))
            .await;
        if !enabled {
            let status = renewed.unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert_eq!(status.message(), "unauthenticated");
            running.shutdown().await.unwrap();
            continue;
        }
        let chain = renewed.unwrap().into_inner().cert_chain;
        assert_eq!(
            spiffe_of(&chain[0]),
            "spiffe://cluster.local/ns/shop/sa/cart"
        );
        verify_chain(&chain, &root_pem(dir.path()));
        let lifetime = lifetime_of(&chain[0]);
        assert!(
            lifetime <= Duration::from_secs(24 * 3600 + 120),
            "renewal lives {lifetime:?}"
        );
        // A token may still ask for 90 days.
        let (_k, token_csr) = csr();
        let by_token = ca
            .create_certificate(request(&token_csr, NINETY_DAYS, Some(&tok)))
            .await
            .unwrap()
            .into_inner();
        assert!(lifetime_of(&by_token.cert_chain[0]) > Duration::from_secs(89 * 24 * 3600));
        running.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn restart_keeps_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let before = root_pem(dir.path());
    running.shutdown().await.unwrap();
    let running = start(dir.path()).await;
    assert_eq!(root_pem(dir.path()), before);
    running.shutdown().await.unwrap();
}

/// The real binary: `palisade token` prints a token the standalone controller accepts, and the
/// controller exits 0 on SIGTERM.
#[tokio::test]
async fn binary_token_and_clean_sigterm() {
    let bin = env!("CARGO_BIN_EXE_palisade");
    let dir = tempfile::tempdir().unwrap();
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (grpc, monitor) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(bin)
        .args(["controller", "--standalone", "--state-dir"])
        .arg(dir.path())
        .arg("--config-dir")
        .arg(dir.path().join("config"))
        .args([
            "--grpc-addr",
            &grpc.to_string(),
            "--monitor-addr",
            &monitor.to_string(),
        ])
        .args(["--webhook-addr", "127.0.0.1:0"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(monitor).await {
            let _ = s
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "controller did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = std::process::Command::new(bin)
        .args(["token", "--state-dir"])
        .arg(dir.path())
        .args([
            "--namespace",
            "ns1",
            "--service-account",
            "sa1",
            "--ttl",
            "10m",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let tok = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem(dir.path())))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{grpc}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let mut ca = IstioCertificateServiceClient::new(channel.connect().await.unwrap());
    let (_k, csr) = csr();
    let chain = ca
        .create_certificate(request(&csr, 0, Some(&tok)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        spiffe_of(&chain.cert_chain[0]),
        "spiffe://cluster.local/ns/ns1/sa/sa1"
    );

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let status = status.expect("controller exits after SIGTERM").unwrap();
    assert!(status.success(), "exit status {status:?}");
}

/// The serving certificate is renewed in the background and new TLS handshakes get the new
/// one without any restart.
#[tokio::test]
async fn serving_certificate_hot_reload() {
    use palisade::ca::serving::{self, ServingResolver, ServingSpec};
    server::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let store = palisade::ca::DirStore::new(dir.path());
    let signing = palisade::ca::bootstrap_self_signed(&store, SystemTime::now())
        .await
        .unwrap();
    let root = signing.root().clone();
    let authority = Arc::new(palisade::ca::Authority::new(
        signing,
        palisade::ca::TrustBundle::new(root.clone()),
        palisade::ca::IssuancePolicy::default(),
        palisade::metrics::CaMetrics::default(),
    ));
    // A 3-second certificate is renewed two seconds in.
    let spec = ServingSpec {
        ttl: Duration::from_secs(3),
        ..ServingSpec::for_service("palisade", "ns", true)
    };
    let (rx, renewal) = serving::start(authority, spec).unwrap();
    let config =
        palisade::net::tls::server_config(Arc::new(ServingResolver::new(rx)), None, &[b"h2"])
            .unwrap();
    let listener = tokio::net::TcpListener::bind(support::loopback())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = palisade::net::tls::incoming(listener, Arc::new(config));
    tokio::spawn(async move { while incoming.recv().await.is_some() {} });

    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let presented = || {
        let client = client.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .unwrap();
            tls.get_ref().1.peer_certificates().unwrap()[0].clone()
        }
    };
    let first = presented().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if presented().await != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "serving certificate was not renewed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    renewal.abort();
}
