//! The gRPC listener's connection cap under a flood of idle TLS connections: connections beyond
//! `max_grpc_connections` are closed on arrival and counted, connections already open keep
//! being served, and the server serves new ones again once the flood goes away.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use palisade::auth::Identity;
use palisade::auth::jwt::LocalJwtKey;
use palisade::server;
use palisade::xds::proto::istio_v1_auth::IstioCertificateRequest;
use palisade::xds::proto::istio_v1_auth::istio_certificate_service_client::IstioCertificateServiceClient;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::support;

const CAP: usize = 4;
const FLOOD: usize = 12;

async fn ca_client(
    addr: std::net::SocketAddr,
    root: &str,
) -> Result<IstioCertificateServiceClient<Channel>, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await?;
    Ok(IstioCertificateServiceClient::new(channel))
}

async fn issue(
    ca: &mut IstioCertificateServiceClient<Channel>,
    token: &str,
) -> Result<(), tonic::Status> {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 0,
        metadata: None,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    ca.create_certificate(req).await.map(|_| ())
}

/// An idle TLS connection (handshake done, nothing sent); `None` when the server closed it.
async fn idle_tls(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .ok()
}

#[tokio::test]
async fn the_connection_cap_holds_under_a_flood_of_idle_tls_connections() {
    server::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let config = server::Config {
        max_grpc_connections: CAP,
        ..support::standalone_config(dir.path())
    };
    let running = server::start(config).await.unwrap();
    let root = std::fs::read_to_string(dir.path().join(server::ROOT_CERT_FILE)).unwrap();
    let token = LocalJwtKey::load_or_create(dir.path())
        .unwrap()
        .issue(
            &Identity::new("shop", "cart").unwrap(),
            "palisade-ca",
            Duration::from_secs(600),
            SystemTime::now(),
        )
        .unwrap();

    // A proxy already connected (one slot).
    let mut proxy = ca_client(running.grpc_addr, &root).await.unwrap();
    issue(&mut proxy, &token).await.unwrap();

    // The flood, one connection after another: the remaining slots fill, the rest are shed.
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let mut flood = Vec::new();
    let mut shed = 0;
    for _ in 0..FLOOD {
        match idle_tls(running.grpc_addr, tls.clone()).await {
            Some(stream) => flood.push(stream),
            None => shed += 1,
        }
    }
    assert_eq!(flood.len(), CAP - 1, "only the free slots are taken");
    assert_eq!(shed, FLOOD - (CAP - 1));
    let metrics = &running.metrics.grpc;
    assert_eq!(metrics.connections_rejected.get(), shed as u64);
    assert_eq!(metrics.connections_open.get(), CAP as i64);
    assert!(
        running
            .metrics
            .encode()
            .contains(&format!("palisade_grpc_connections_rejected_total {shed}"))
    );

    // The proxy that was connected before the flood is still served, and a newcomer is not.
    issue(&mut proxy, &token).await.unwrap();
    let newcomer = match ca_client(running.grpc_addr, &root).await {
        Ok(mut ca) => issue(&mut ca, &token).await.is_ok(),
        Err(_) => false,
    };
    assert!(!newcomer, "a connection over the cap was served");

    // The flood goes away: new connections are served again.
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut ca) = ca_client(running.grpc_addr, &root).await
            && issue(&mut ca, &token).await.is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown().await.unwrap();
}
