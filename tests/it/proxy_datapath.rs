//! The proxy's data path on loopback: real inbound and outbound listeners (`serve`), injected
//! original destinations, certificates from a real CA, hand-built policies on watches, an echo
//! app behind the server proxy. Mesh mTLS end to end, STRICT / PERMISSIVE / DISABLE, secure
//! naming, identity rotation, policy changes on open and new connections, shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade::proxy::metrics::{FailureLabels, ProxyMetrics};
use palisade::proxy::orig_dst::OrigDstSource;
use palisade::proxy::state::{Identity, Policy, Shared, Trust};
use palisade::proxy::tls::MeshTls;
use palisade::proxy::{Context, MESH_ALPN, Ports, inbound, outbound};
use palisade::xds::proto::palisade_v1 as pb;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use crate::proxy_pki::{Ca, TD, client_hello};

const SERVER_ID: &str = "spiffe://cluster.local/ns/b/sa/server";
const VIP: &str = "10.96.0.1:80";
const WAIT: Duration = Duration::from_secs(10);

/// One proxy's watches (the agent's side) and its context.
struct Proxy {
    identity: watch::Sender<Option<Arc<Identity>>>,
    policy: watch::Sender<Option<Arc<Policy>>>,
    _trust: watch::Sender<Arc<Trust>>,
    metrics: ProxyMetrics,
    ctx: Context,
}

fn proxy(
    ca: &Ca,
    identity: Option<Arc<Identity>>,
    policy: Option<Policy>,
    orig: OrigDstSource,
) -> Proxy {
    let (identity_tx, identity) = watch::channel(identity);
    let (trust_tx, trust) = watch::channel(ca.trust());
    let (policy_tx, policy) = watch::channel(policy.map(Arc::new));
    let metrics = ProxyMetrics::default();
    let shared = Shared {
        identity,
        trust,
        policy,
    };
    let ports = Ports {
        inbound: 1,
        outbound: 2,
        admin: 3,
    };
    let mut ctx = Context::new(shared, metrics.clone(), TD, ports).unwrap();
    ctx.orig_dst = orig;
    Proxy {
        identity: identity_tx,
        policy: policy_tx,
        _trust: trust_tx,
        metrics,
        ctx,
    }
}

fn inbound_policy(mode: pb::MtlsMode) -> Policy {
    Policy::new(
        pb::InboundPolicy {
            default_mode: mode as i32,
            ..Default::default()
        },
        vec![],
        vec![],
        BTreeMap::new(),
    )
}

/// A client policy routing the VIP to `endpoint` with `tls`.
fn client_policy(endpoint: SocketAddr, tls: pb::ClientTls) -> Policy {
    let vip: SocketAddr = VIP.parse().unwrap();
    Policy::new(
        pb::InboundPolicy::default(),
        vec![pb::Destination {
            fqdn: "server.b.svc.cluster.local".into(),
            vips: vec![vip.ip().to_string()],
            ports: vec![pb::ServicePort {
                port: 80,
                endpoints: vec![pb::Endpoint {
                    ip: endpoint.ip().to_string(),
                    port: u32::from(endpoint.port()),
                    meshed: true,
                    identity: SERVER_ID.into(),
                    tls: Some(tls),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
        vec![],
        BTreeMap::new(),
    )
}

fn mesh_tls(expected: &[&str]) -> pb::ClientTls {
    pb::ClientTls {
        mode: pb::client_tls::Mode::MeshMtls as i32,
        expected_identities: expected.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// An echo app; counts its connections.
async fn echo_app() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, accepted)
}

/// Starts `serve` for a proxy; returns its address and the shutdown switch.
async fn start(
    p: &Proxy,
    inbound_side: bool,
) -> (
    SocketAddr,
    watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(false);
    let ctx = p.ctx.clone();
    let task = if inbound_side {
        tokio::spawn(inbound::serve(listener, ctx, rx))
    } else {
        tokio::spawn(outbound::serve(listener, ctx, rx))
    };
    (addr, tx, task)
}

async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("echo");
    got
}

/// The peer closes without sending anything back.
async fn assert_closed<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    let _ = s.write_all(b"ping").await;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("got {n} bytes from a connection that should be refused"),
        Err(_) => panic!("the connection stayed open"),
    }
}

fn failures(m: &ProxyMetrics, direction: &'static str, reason: &'static str) -> u64 {
    m.failures
        .get_or_create(&FailureLabels { direction, reason })
        .get()
}

/// A mesh client (as another proxy would be) connecting straight to an inbound listener.
async fn mesh_connect(
    ca: &Ca,
    identity: Option<Arc<Identity>>,
    expect: &str,
    to: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let (_, id_rx) = watch::channel(identity);
    let (_, trust_rx) = watch::channel(ca.trust());
    let mesh = MeshTls::new(id_rx, trust_rx, TD).unwrap();
    let config = mesh.client_config(&[expect.to_string()]).unwrap();
    let tcp = TcpStream::connect(to).await?;
    TlsConnector::from(config)
        .connect(ServerName::IpAddress(to.ip().into()), tcp)
        .await
}

fn serial_of(s: &tokio_rustls::client::TlsStream<TcpStream>) -> String {
    let leaf = &s.get_ref().1.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    palisade::hex(cert.raw_serial())
}

#[tokio::test]
async fn mesh_mtls_end_to_end_app_sees_plaintext() {
    let ca = Ca::new();
    let (app, accepted) = echo_app().await;
    let server = proxy(
        &ca,
        Some(ca.identity("b", "server")),
        Some(inbound_policy(pb::MtlsMode::Strict)),
        OrigDstSource::Fixed(app),
    );
    let (inbound_addr, _stop_in, _) = start(&server, true).await;
    let client = proxy(
        &ca,
        Some(ca.identity("a", "client")),
        Some(client_policy(inbound_addr, mesh_tls(&[SERVER_ID]))),
        OrigDstSource::Fixed(VIP.parse().unwrap()),
    );
    let (outbound_addr, _stop_out, _) = start(&client, false).await;

    let mut s = TcpStream::connect(outbound_addr).await.unwrap();
    // The echo returns exactly the plaintext: the app saw plaintext.
    assert_eq!(round_trip(&mut s, b"hello mesh").await, b"hello mesh");
    assert_eq!(
        round_trip(&mut s, &[7u8; 100_000]).await,
        vec![7u8; 100_000]
    );
    // Half-close: the client ends its side, the echo's end of stream comes back.
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let mesh = |m: &ProxyMetrics, direction| {
        m.connections
            .get_or_create(&palisade::proxy::metrics::ConnectionLabels {
                direction,
                tls: "mesh",
            })
            .get()
    };
    assert_eq!(mesh(&client.metrics, "outbound"), 1);
    assert_eq!(mesh(&server.metrics, "inbound"), 1);

    // What travels between the proxies is TLS: the server proxy's port speaks only mesh TLS.
    let mut direct = TcpStream::connect(inbound_addr).await.unwrap();
    assert_closed(&mut direct).await;
    assert_eq!(failures(&server.metrics, "inbound", "plaintext_refused"), 1);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "refused before the app");
}

#[tokio::test]
async fn strict_refuses_plaintext_anonymous_tls_and_foreign_certificates() {
    let ca = Ca::new();
    let (app, accepted) = echo_app().await;
    let server = proxy(
        &ca,
        Some(ca.identity("b", "server")),
        Some(inbound_policy(pb::MtlsMode::Strict)),
        OrigDstSource::Fixed(app),
    );
    let (addr, _stop, _) = start(&server, true).await;

    let mut plain = TcpStream::connect(addr).await.unwrap();
    assert_closed(&mut plain).await;

    // TLS 1.3: the client's handshake completes before the server checks its (missing)
    // certificate; the server then closes.
    if let Ok(mut anonymous) = mesh_connect(&ca, None, SERVER_ID, addr).await {
        assert_closed(&mut anonymous).await;
    }
    let foreign = Ca::new();
    if let Ok(mut f) =
        mesh_connect(&ca, Some(foreign.identity("a", "client")), SERVER_ID, addr).await
    {
        assert_closed(&mut f).await;
    }
    assert_eq!(failures(&server.metrics, "inbound", "plaintext_refused"), 1);
    assert_eq!(
        failures(&server.metrics, "inbound", "no_client_certificate"),
        1
    );
    assert_eq!(
        failures(&server.metrics, "inbound", "untrusted_certificate"),
        1
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the app"
    );

    // A mesh client with a certificate of the mesh gets through.
    let mut ok = mesh_connect(&ca, Some(ca.identity("a", "client")), SERVER_ID, addr)
        .await
        .unwrap();
    assert_eq!(round_trip(&mut ok, b"in").await, b"in");
}

#[tokio::test]
async fn permissive_serves_mesh_and_passes_other_bytes_untouched() {
    let ca = Ca::new();
    let (app, accepted) = echo_app().await;
    let server = proxy(
        &ca,
        Some(ca.identity("b", "server")),
        Some(inbound_policy(pb::MtlsMode::Permissive)),
        OrigDstSource::Fixed(app),
    );
    let (addr, _stop, _) = start(&server, true).await;

    let mut plain = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        round_trip(&mut plain, b"GET / HTTP/1.1\r\n\r\n").await,
        b"GET / HTTP/1.1\r\n\r\n"
    );

    // The app's own TLS (another ALPN) reaches the app byte for byte: the echo returns the
    // very ClientHello.
    let hello = client_hello(&[b"h2"]);
    let mut foreign_tls = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut foreign_tls, &hello).await, hello);

    let mut mesh = mesh_connect(&ca, Some(ca.identity("a", "client")), SERVER_ID, addr)
        .await
        .unwrap();
    assert_eq!(round_trip(&mut mesh, b"tls").await, b"tls");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);

    // Server speaks first: a client that sends nothing still reaches the app (after the
    // short detection wait), so the app's banner would come through.
    let _silent = TcpStream::connect(addr).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while accepted.load(Ordering::SeqCst) < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a silent client never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn disable_passes_everything_through_even_a_mesh_hello() {
    let ca = Ca::new();
    let (app, _) = echo_app().await;
    let server = proxy(
        &ca,
        Some(ca.identity("b", "server")),
        Some(inbound_policy(pb::MtlsMode::Disable)),
        OrigDstSource::Fixed(app),
    );
    let (addr, _stop, _) = start(&server, true).await;
    let mut plain = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut plain, b"plain").await, b"plain");
    let hello = client_hello(&[MESH_ALPN]);
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        round_trip(&mut s, &hello).await,
        hello,
        "not terminated under DISABLE"
    );
}

#[tokio::test]
async fn secure_naming_refuses_a_server_with_another_identity() {
    let ca = Ca::new();
    let (app, accepted) = echo_app().await;
    let server = proxy(
        &ca,
        Some(ca.identity("b", "server")),
        Some(inbound_policy(pb::MtlsMode::Strict)),
        OrigDstSource::Fixed(app),
    );
    let (inbound_addr, _stop_in, _) = start(&server, true).await;
    let client = proxy(
        &ca,
        Some(ca.identity("a", "client")),
        Some(client_policy(
            inbound_addr,
            mesh_tls(&["spiffe://cluster.local/ns/b/sa/other"]),
        )),
        OrigDstSource::Fixed(VIP.parse().unwrap()),
    );
    let (outbound_addr, _stop_out, _) = start(&client, false).await;
    let mut s = TcpStream::connect(outbound_addr).await.unwrap();
    assert_closed(&mut s).await;
    assert_eq!(
        failures(&client.metrics, "outbound", "identity_mismatch"),
        1
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 0);

    // The policy changes (the rule now names the right identity): new connections use it.
    client.policy.send_replace(Some(Arc::new(client_policy(
        inbound_addr,
        mesh_tls(&[SERVER_ID]),
    ))));
    let mut s = TcpStream::connect(outbound_addr).await.unwrap();
    assert_eq!(round_trip(&mut s, b"now").await, b"now");
}

#[tokio::test]
async fn identity_rotation_keeps_open_connections_and_new_ones_get_the_new_certificate() {
    let ca = Ca::new();
    let (app, _) = echo_app().await;
    let first = ca.identity("b", "server");
    let server = proxy(
        &ca,
        Some(first.clone()),
        Some(inbound_policy(pb::MtlsMode::Strict)),
        OrigDstSource::Fixed(app),
    );
    let (addr, _stop, _) = start(&server, true).await;
    let client_id = Some(ca.identity("a", "client"));
    let mut old = mesh_connect(&ca, client_id.clone(), SERVER_ID, addr)
        .await
        .unwrap();
    assert_eq!(round_trip(&mut old, b"1").await, b"1");
    assert_eq!(serial_of(&old), first.serial);

    let second = ca.identity("b", "server");
    assert_ne!(second.serial, first.serial);
    server.identity.send_replace(Some(second.clone()));

    assert_eq!(
        round_trip(&mut old, b"still").await,
        b"still",
        "the open connection keeps working"
    );
    let mut new = mesh_connect(&ca, client_id, SERVER_ID, addr).await.unwrap();
    assert_eq!(round_trip(&mut new, b"2").await, b"2");
    assert_eq!(
        serial_of(&new),
        second.serial,
        "a new handshake presents the new certificate"
    );
}

#[tokio::test]
async fn a_policy_change_applies_to_new_connections_only() {
    let ca = Ca::new();
    let (app, _) = echo_app().await;
    let server = proxy(
        &ca,
        Some(ca.identity("b", "server")),
        Some(inbound_policy(pb::MtlsMode::Permissive)),
        OrigDstSource::Fixed(app),
    );
    let (addr, _stop, _) = start(&server, true).await;
    let mut open = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut open, b"before").await, b"before");
    server
        .policy
        .send_replace(Some(Arc::new(inbound_policy(pb::MtlsMode::Strict))));
    assert_eq!(
        round_trip(&mut open, b"after").await,
        b"after",
        "the open connection survives"
    );
    let mut new = TcpStream::connect(addr).await.unwrap();
    assert_closed(&mut new).await;
}

#[tokio::test]
async fn before_the_first_policy_nothing_gets_in_and_outbound_refuses() {
    let ca = Ca::new();
    let (app, accepted) = echo_app().await;
    let server = proxy(
        &ca,
        Some(ca.identity("b", "server")),
        None,
        OrigDstSource::Fixed(app),
    );
    let (inbound_addr, _stop_in, _) = start(&server, true).await;
    let mut plain = TcpStream::connect(inbound_addr).await.unwrap();
    assert_closed(&mut plain).await;
    let mut mesh = mesh_connect(
        &ca,
        Some(ca.identity("a", "client")),
        SERVER_ID,
        inbound_addr,
    )
    .await
    .unwrap();
    // Who may connect is not known yet either: even a mesh client is reset (fail closed).
    assert_closed(&mut mesh).await;
    assert_eq!(failures(&server.metrics, "inbound", "authz_denied"), 1);

    let client = proxy(
        &ca,
        Some(ca.identity("a", "client")),
        None,
        OrigDstSource::Fixed(app),
    );
    let (outbound_addr, _stop_out, _) = start(&client, false).await;
    let mut s = TcpStream::connect(outbound_addr).await.unwrap();
    assert_closed(&mut s).await;
    assert_eq!(failures(&client.metrics, "outbound", "no_policy"), 1);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the app"
    );
}

#[tokio::test]
async fn unknown_destinations_and_plaintext_endpoints_pass_through() {
    let ca = Ca::new();
    let (app, accepted) = echo_app().await;
    let empty = Policy::new(Default::default(), vec![], vec![], BTreeMap::new());
    let client = proxy(
        &ca,
        Some(ca.identity("a", "client")),
        Some(empty),
        OrigDstSource::Fixed(app),
    );
    let (addr, _stop, _) = start(&client, false).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut s, b"out").await, b"out");

    // A Service endpoint whose rule says PLAINTEXT: through the VIP, in plaintext.
    let plaintext = pb::ClientTls {
        mode: pb::client_tls::Mode::Plaintext as i32,
        ..Default::default()
    };
    let via_vip = proxy(
        &ca,
        Some(ca.identity("a", "client")),
        Some(client_policy(app, plaintext)),
        OrigDstSource::Fixed(VIP.parse().unwrap()),
    );
    let (addr, _stop2, _) = start(&via_vip, false).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut s, b"vip").await, b"vip");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn shutdown_stops_accepting_and_waits_for_open_connections() {
    let ca = Ca::new();
    let (app, _) = echo_app().await;
    let server = proxy(
        &ca,
        Some(ca.identity("b", "server")),
        Some(inbound_policy(pb::MtlsMode::Permissive)),
        OrigDstSource::Fixed(app),
    );
    let (addr, stop, task) = start(&server, true).await;
    let mut open = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut open, b"x").await, b"x");
    stop.send_replace(true);
    // Poll until the listener is gone (new connections refused by the kernel).
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !task.is_finished(),
        "an open connection keeps serve waiting"
    );
    assert_eq!(round_trip(&mut open, b"y").await, b"y");
    drop(open);
    tokio::time::timeout(WAIT, task)
        .await
        .expect("serve returns")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_are_closed_and_open_ones_served() {
    let ca = Ca::new();
    let (app, _) = echo_app().await;
    let mut server = proxy(
        &ca,
        Some(ca.identity("b", "server")),
        Some(inbound_policy(pb::MtlsMode::Disable)),
        OrigDstSource::Fixed(app),
    );
    server.ctx.max_connections = 1;
    let (addr, _stop, _) = start(&server, true).await;
    let mut open = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut open, b"a").await, b"a");
    let mut shed = TcpStream::connect(addr).await.unwrap();
    assert_closed(&mut shed).await;
    assert_eq!(failures(&server.metrics, "inbound", "overloaded"), 1);
    assert_eq!(round_trip(&mut open, b"b").await, b"b");
}
