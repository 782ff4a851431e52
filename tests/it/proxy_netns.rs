//! The mesh for real, without a cluster: the standalone control plane in a hub network
//! namespace; pods (network namespaces on a bridge) started as the injector starts them —
//! `palisade init`, then `palisade proxy` as uid 1337 with the injected environment; plain
//! HTTP/TCP apps; policies as files in the config directory. The wire is checked with a packet
//! capture (an AF_PACKET socket in the hub namespace sees every frame on the bridge).
//!
//! Needs root, iproute2, iptables and util-linux (setpriv), like the `palisade init` test.
//! With `PALISADE_SKIP_NETNS=1` it does not run and reports itself skipped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade::demo::app::{self, Reply};
use palisade::demo::lab::{self, Pod};
use palisade::demo::mesh::{self, Mesh};

use crate::support;

const NAME: &str = "proxy_netns::mesh_end_to_end";
const NS: &str = "shop";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 21);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 22);
const LEGACY_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 23);
/// A second meshed client, with another service account.
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 24);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 10);
/// STRICT under the namespace policy.
const HTTP_PORT: u16 = 8080;
/// DISABLE by the server's portLevelMtls.
const PLAIN_PORT: u16 = 9090;
/// A line echo, for connections held open across changes.
const ECHO_PORT: u16 = 7070;
/// Short enough that a renewal (at about half of it) happens during the test.
const CERT_TTL: &str = "60s";
const CHANGE_DEADLINE: Duration = Duration::from_secs(15);

fn pod_yaml(name: &str, sa: &str, ip: Ipv4Addr, meshed: bool) -> String {
    let mesh_label = if meshed {
        "\n    security.palisade.dev/tlsMode: palisade"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NS}\n  labels:\n    app: {name}{mesh_label}\nspec:\n  serviceAccountName: {sa}\n  containers:\n  - name: app\n    image: test\n    ports:\n    - containerPort: {HTTP_PORT}\n      name: http\n    - containerPort: {PLAIN_PORT}\n      name: plain\n    - containerPort: {ECHO_PORT}\n      name: echo\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n"
    )
}

fn workloads() -> String {
    [
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n"),
        pod_yaml("client", "client", CLIENT_IP, true),
        pod_yaml("server", "web", SERVER_IP, true),
        pod_yaml("legacy", "legacy", LEGACY_IP, false),
        pod_yaml("other", "other", OTHER_IP, true),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {NS}\nspec:\n  clusterIP: {VIP}\n  selector:\n    app: server\n  ports:\n  - name: http\n    port: 80\n    targetPort: http\n"
        ),
    ]
    .join("---\n")
}

/// The namespace's mode, and the server's port 9090 always DISABLE.
fn peer_authentications(mode: &str) -> String {
    format!(
        "apiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: {NS}\nspec:\n  mtls:\n    mode: {mode}\n---\napiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\nmetadata:\n  name: server-plain-port\n  namespace: {NS}\nspec:\n  selector:\n    matchLabels:\n      app: server\n  mtls:\n    mode: {mode}\n  portLevelMtls:\n    {PLAIN_PORT}:\n      mode: DISABLE\n"
    )
}

fn destination_rule(tls: &str) -> String {
    format!(
        "apiVersion: networking.palisade.dev/v1\nkind: DestinationRule\nmetadata:\n  name: web\n  namespace: {NS}\nspec:\n  host: web.{NS}.svc.cluster.local\n  trafficPolicy:\n    tls:\n{tls}"
    )
}

/// An AuthorizationPolicy on the server pod; `rules` is the YAML list under `rules:`.
fn authorization_policy(name: &str, action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  selector:\n    matchLabels:\n      app: server\n  action: {action}\n  rules:\n{rules}"
    )
}

/// What an app saw: the first line of each request (or echo session) and the peer address.
type Seen = Arc<Mutex<Vec<(String, SocketAddr)>>>;

/// HTTP on `port` inside `pod`, recording each request's first line.
fn http_app(pod: &Pod, port: u16, body: &'static str) -> Seen {
    let seen: Seen = Arc::default();
    let listener = pod
        .enter(move || TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
        .expect("enter")
        .expect("bind app");
    let record = seen.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let peer = s.peer_addr().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let first = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            record.lock().unwrap().push((first, peer));
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    seen
}

/// A line echo on `port` inside `pod` (each connection on its own thread).
fn echo_app(pod: &Pod, port: u16) {
    let listener = pod
        .enter(move || TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
        .expect("enter")
        .expect("bind echo");
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().expect("clone"));
                let mut writer = s;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if writer.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                    line.clear();
                }
            });
        }
    });
}

/// An open connection to the echo app, made from inside `pod`.
struct EchoSession {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl EchoSession {
    fn open(pod: &Pod, to: SocketAddr) -> EchoSession {
        let stream = pod
            .enter(move || TcpStream::connect_timeout(&to, Duration::from_secs(5)))
            .expect("enter")
            .expect("connect to the echo app");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        EchoSession {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// Sends a line and expects it back.
    fn round_trip(&mut self, text: &str) -> Result<(), String> {
        self.writer
            .write_all(format!("{text}\n").as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("closed".into()),
            Ok(_) if line.trim_end() == text => Ok(()),
            Ok(_) => Err(format!("echoed {line:?}")),
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

/// TCP payloads seen on the bridge: (source, destination, payload).
type Frames = Arc<Mutex<Vec<(SocketAddr, SocketAddr, Vec<u8>)>>>;

/// A packet capture in the hub namespace: every IPv4 TCP segment with a payload.
struct Capture {
    frames: Frames,
    stop: Arc<AtomicBool>,
}

impl Capture {
    fn start(hub: &Pod) -> Capture {
        use socket2::{Domain, Protocol, Socket, Type};
        const ETH_P_ALL: u16 = 0x0003;
        let socket = hub
            .enter(|| {
                Socket::new(
                    Domain::PACKET,
                    Type::RAW,
                    Some(Protocol::from(i32::from(ETH_P_ALL.to_be()))),
                )
            })
            .expect("enter hub")
            .expect("AF_PACKET socket (root)");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let frames: Frames = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (frames.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                let Ok(n) = (&socket).read(&mut buf) else {
                    continue;
                };
                if let Some(segment) = tcp_payload(&buf[..n]) {
                    f.lock().unwrap().push(segment);
                }
            }
        });
        Capture { frames, stop }
    }

    /// Payloads between `a` and `b` (either direction) seen since `since` frames.
    fn between(&self, a: Ipv4Addr, b: Ipv4Addr, since: usize) -> Vec<Vec<u8>> {
        let frames = self.frames.lock().unwrap();
        frames[since.min(frames.len())..]
            .iter()
            .filter(|(s, d, _)| (s.ip() == a && d.ip() == b) || (s.ip() == b && d.ip() == a))
            .map(|(_, _, p)| p.clone())
            .collect()
    }

    fn len(&self) -> usize {
        self.frames.lock().unwrap().len()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Ethernet → IPv4 → TCP payload, if the frame is one with a payload.
fn tcp_payload(frame: &[u8]) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 || *ip.get(9)? != 6 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let tcp = ip.get(ihl..total.min(ip.len()))?;
    let offset = usize::from(tcp.get(12)? >> 4) * 4;
    let payload = tcp.get(offset..)?;
    if payload.is_empty() {
        return None;
    }
    let port = |i: usize| u16::from_be_bytes([tcp[i], tcp[i + 1]]);
    Some((
        SocketAddr::from((src, port(0))),
        SocketAddr::from((dst, port(2))),
        payload.to_vec(),
    ))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A TLS ClientHello to `to` from inside `pod`, offering Palisade's ALPN, with `client_cert`
/// (chain, key) or none; whether an HTTP answer came back.
fn tls_call(
    pod: &Pod,
    to: SocketAddr,
    client_cert: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
) -> Result<String, String> {
    let stream = pod
        .enter(move || TcpStream::connect_timeout(&to, Duration::from_secs(5)))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let builder = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer::new()));
    let mut config = match client_cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![palisade::proxy::MESH_ALPN.to_vec()];
    let name = rustls::pki_types::ServerName::IpAddress(to.ip().into());
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, stream);
    tls.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    match tls.read_to_string(&mut response) {
        Ok(_) if response.starts_with("HTTP/1.1 200") => Ok(response),
        Ok(_) => Err(format!("no HTTP answer ({} bytes)", response.len())),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Accepts any server certificate: the test plays an attacker probing the server's proxy, so
/// only what the server accepts matters.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl AcceptAnyServer {
    fn new() -> Self {
        AcceptAnyServer(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
    }
}

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A workload certificate for `spiffe://cluster.local/ns/shop/sa/client`, well formed, from a
/// CA the mesh does not trust (a second Palisade CA with its own root).
fn foreign_certificate() -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    use palisade::ca::authority::{IssuancePolicy, SigningCa, generate_root};
    use palisade::ca::{Authority, Identity, TrustBundle};
    use rustls::pki_types::pem::PemObject;
    let (key_pem, cert_pem) = generate_root(std::time::SystemTime::now()).unwrap();
    let bundle = TrustBundle::from_pem(cert_pem.as_bytes()).unwrap();
    let signing = SigningCa::new(&key_pem, bundle.roots()[0].clone(), vec![]).unwrap();
    let authority = Authority::new(
        signing,
        bundle,
        IssuancePolicy::default(),
        Default::default(),
    );
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let issued = authority
        .issue(&Identity::new(NS, "client").unwrap(), &csr, 0, "test")
        .unwrap();
    let chain =
        rustls::pki_types::CertificateDer::pem_slice_iter(issued.chain_pem.concat().as_bytes())
            .map(Result::unwrap)
            .collect();
    (
        chain,
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
}

/// Polls `f` until it returns true or `deadline` passes; how long it took.
fn eventually(deadline: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

fn call(pod: &Pod, to: SocketAddr) -> Reply {
    pod.enter(move || app::call(to)).expect("enter pod")
}

fn is_ok(reply: &Reply) -> bool {
    matches!(reply, Reply::Ok(_))
}

#[test]
fn mesh_end_to_end() {
    if std::env::var("PALISADE_SKIP_NETNS").as_deref() == Ok("1") {
        support::skipped(NAME, "PALISADE_SKIP_NETNS=1");
        return;
    }
    if let Some(why) = lab::missing_prerequisite() {
        panic!(
            "cannot run the mesh end to end: {why}. Set PALISADE_SKIP_NETNS=1 to skip this test explicitly."
        );
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    // A fixed prefix: a run that was killed outright is cleaned up by the next one.
    let prefix = "pal-e2e";
    let mesh = Mesh::start(
        prefix,
        &dir.path().join("lab"),
        &support::palisade_bin(),
        &["--default-ttl", CERT_TTL],
        &[
            ("workloads.yaml", workloads()),
            ("peer-authentication.yaml", peer_authentications("STRICT")),
        ],
        lab::Cleanup::default(),
    )
    .expect("control plane starts");
    let client = mesh
        .add_meshed_pod(
            "client",
            CLIENT_IP,
            NS,
            "client",
            &["--drain-timeout", "2s"],
        )
        .expect("client pod");
    let server = mesh
        .add_meshed_pod("server", SERVER_IP, NS, "web", &[])
        .expect("server pod");
    let legacy = mesh.add_pod("legacy", LEGACY_IP).expect("legacy pod");
    let other = mesh
        .add_meshed_pod("other", OTHER_IP, NS, "other", &[])
        .expect("second client pod");
    let seen_http = http_app(&server, HTTP_PORT, "web");
    let seen_plain = http_app(&server, PLAIN_PORT, "plain");
    echo_app(&server, ECHO_PORT);
    for pod in [&client, &server, &other] {
        mesh.wait_healthy(pod, Duration::from_secs(60))
            .expect("proxy healthy");
    }
    let capture = Capture::start(mesh.lab.hub());
    let logs = || {
        format!(
            "\n--- client proxy ---\n{}\n--- other proxy ---\n{}\n--- server proxy ---\n{}\n--- controller ---\n{}",
            mesh.lab.log_tail("proxy-client", 3000),
            mesh.lab.log_tail("proxy-other", 1500),
            mesh.lab.log_tail("proxy-server", 3000),
            mesh.lab.log_tail("controller", 2000)
        )
    };
    let vip = SocketAddr::from((VIP, 80));
    let server_http = SocketAddr::from((SERVER_IP, HTTP_PORT));
    let server_plain = SocketAddr::from((SERVER_IP, PLAIN_PORT));

    // 1. meshed → meshed through the Service VIP (no interface holds it): mTLS on the wire,
    //    plaintext at the app.
    let mark = capture.len();
    let reply = call(&client, vip);
    assert!(
        matches!(&reply, Reply::Ok(b) if b == "web"),
        "VIP call: {reply:?}{}",
        logs()
    );
    std::thread::sleep(Duration::from_millis(300));
    let wire = capture.between(CLIENT_IP, SERVER_IP, mark);
    assert!(!wire.is_empty(), "the capture saw nothing between the pods");
    assert!(
        wire.iter().all(|p| !contains(p, b"GET /")),
        "plaintext HTTP on the wire between meshed pods"
    );
    assert!(
        wire.iter().any(|p| p.starts_with(&[0x16, 0x03])),
        "no TLS handshake record on the wire"
    );
    assert!(
        seen_http
            .lock()
            .unwrap()
            .iter()
            .any(|(line, _)| line == "GET / HTTP/1.1"),
        "the app did not see the plaintext request"
    );
    let (client_id, _) = mesh::certificate(&client).expect("client /certs");
    assert_eq!(
        client_id,
        format!("spiffe://cluster.local/ns/{NS}/sa/client")
    );
    let (server_id, first_serial) = mesh::certificate(&server).expect("server /certs");
    assert_eq!(server_id, format!("spiffe://cluster.local/ns/{NS}/sa/web"));
    // `palisade proxy`, started as the injector starts it, runs as the proxy-only executable.
    let pid = mesh
        .lab
        .pid(&mesh::proxy_name("server"))
        .expect("server proxy pid");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("/proc/<pid>/exe");
    assert_eq!(
        exe.file_name(),
        Some(std::ffi::OsStr::new(palisade::cli::proxy::DEDICATED_EXE)),
        "the server proxy runs {}",
        exe.display()
    );

    // 2. STRICT refuses plaintext, TLS without a client certificate, and a foreign CA.
    assert!(
        !is_ok(&call(&legacy, server_http)),
        "plaintext under STRICT{}",
        logs()
    );
    assert!(
        tls_call(&legacy, server_http, None).is_err(),
        "TLS without a client certificate"
    );
    assert!(
        tls_call(&legacy, server_http, Some(foreign_certificate())).is_err(),
        "a certificate from a foreign CA"
    );
    let refused = mesh::counter(
        &server,
        "palisade_proxy_connection_failures_total",
        &[("direction", "inbound")],
    )
    .unwrap();
    assert!(refused >= 3, "the server proxy counted {refused} refusals");

    // 3. Port-level DISABLE: plaintext from anyone, plaintext on the wire from the meshed client.
    assert!(
        is_ok(&call(&legacy, server_plain)),
        "legacy to a DISABLE port{}",
        logs()
    );
    let mark = capture.len();
    assert!(
        is_ok(&call(&client, server_plain)),
        "client to a DISABLE port{}",
        logs()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        capture
            .between(CLIENT_IP, SERVER_IP, mark)
            .iter()
            .any(|p| contains(p, b"GET /")),
        "the client proxy should speak plaintext to a DISABLE port"
    );
    assert_eq!(seen_plain.lock().unwrap().len(), 2);

    // 4. A connection held open across policy changes and a certificate rotation.
    let mut session = EchoSession::open(&client, SocketAddr::from((SERVER_IP, ECHO_PORT)));
    session.round_trip("before").expect("echo through the mesh");

    // 5. DestinationRule DISABLE: the client speaks plaintext, which the STRICT server refuses.
    mesh.write("dr.yaml", &destination_rule("      mode: DISABLE\n"))
        .unwrap();
    let took = eventually(CHANGE_DEADLINE, || !is_ok(&call(&client, vip)));
    assert!(
        took.is_some(),
        "DestinationRule DISABLE never applied{}",
        logs()
    );
    // 6. A DestinationRule whose SAN the server does not hold: refused by the client proxy.
    mesh.write(
        "dr.yaml",
        &destination_rule(&format!(
            "      mode: ISTIO_MUTUAL\n      subjectAltNames:\n      - spiffe://cluster.local/ns/{NS}/sa/impostor\n"
        )),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mismatch = eventually(CHANGE_DEADLINE, || !is_ok(&call(&client, vip)));
    assert!(mismatch.is_some(), "a SAN mismatch was accepted{}", logs());
    mesh.remove("dr.yaml").unwrap();
    assert!(
        eventually(CHANGE_DEADLINE, || is_ok(&call(&client, vip))).is_some(),
        "auto mTLS did not come back{}",
        logs()
    );

    // 7. PERMISSIVE serves plaintext and mTLS; the change arrives within seconds.
    mesh.write(
        "peer-authentication.yaml",
        &peer_authentications("PERMISSIVE"),
    )
    .unwrap();
    let took = eventually(CHANGE_DEADLINE, || is_ok(&call(&legacy, server_http)));
    assert!(
        took.is_some(),
        "PERMISSIVE never let plaintext in{}",
        logs()
    );
    assert!(is_ok(&call(&client, vip)), "mTLS under PERMISSIVE");
    session
        .round_trip("after policy edits")
        .expect("open connection survives policy edits");

    // 8. AuthorizationPolicy. A DENY for the second client's identity closes its open
    //    connection within seconds; the first client's open connection keeps running.
    let echo = SocketAddr::from((SERVER_IP, ECHO_PORT));
    let mut doomed = EchoSession::open(&other, echo);
    doomed
        .round_trip("before DENY")
        .expect("second client echo");
    mesh.write(
        "authz-deny.yaml",
        &authorization_policy(
            "deny-other",
            "DENY",
            &format!("  - from:\n    - source:\n        principals: [\"cluster.local/ns/{NS}/sa/other\"]\n"),
        ),
    )
    .unwrap();
    let closed = eventually(CHANGE_DEADLINE, || {
        doomed.round_trip("still there?").is_err()
    });
    assert!(
        closed.is_some(),
        "a DENY did not close the open connection it covers{}",
        logs()
    );
    eprintln!("open connection closed {closed:?} after the DENY was written");
    session
        .round_trip("after the DENY")
        .expect("an open connection the DENY does not cover keeps running");
    assert!(
        !is_ok(&call(&other, vip)),
        "a new connection under the DENY"
    );
    let denied = mesh::counter(
        &server,
        "palisade_proxy_authz_denied_total",
        &[("policy", "shop/deny-other")],
    )
    .unwrap();
    assert!(denied >= 2, "the server proxy counted {denied} denials");
    mesh.remove("authz-deny.yaml").unwrap();

    // 9. An ALLOW naming the first client's identity: it gets in, the second client (another
    //    service account) and a plaintext client under PERMISSIVE do not.
    mesh.write(
        "authz-allow.yaml",
        &authorization_policy(
            "allow-client",
            "ALLOW",
            &format!("  - from:\n    - source:\n        principals: [\"cluster.local/ns/{NS}/sa/client\"]\n"),
        ),
    )
    .unwrap();
    let took = eventually(CHANGE_DEADLINE, || !is_ok(&call(&legacy, server_http)));
    assert!(
        took.is_some(),
        "an ALLOW naming principals let plaintext in{}",
        logs()
    );
    assert!(
        eventually(CHANGE_DEADLINE, || !is_ok(&call(&other, vip))).is_some(),
        "the ALLOW let the second client in{}",
        logs()
    );
    assert!(
        is_ok(&call(&client, vip)),
        "the ALLOW kept its client out{}",
        logs()
    );

    // 10. A DENY by namespace (on the HTTP port only) wins over that ALLOW.
    mesh.write(
        "authz-deny.yaml",
        &authorization_policy(
            "deny-namespace",
            "DENY",
            &format!("  - from:\n    - source:\n        namespaces: [\"{NS}\"]\n    to:\n    - operation:\n        ports: [\"{HTTP_PORT}\"]\n"),
        ),
    )
    .unwrap();
    assert!(
        eventually(CHANGE_DEADLINE, || !is_ok(&call(&client, vip))).is_some(),
        "an ALLOW beat a DENY{}",
        logs()
    );

    // 11. Policies removed: everyone is back.
    mesh.remove("authz-deny.yaml").unwrap();
    mesh.remove("authz-allow.yaml").unwrap();
    for (who, pod, to) in [
        ("client", &client, vip),
        ("second client", &other, vip),
        ("plaintext", &legacy, server_http),
    ] {
        assert!(
            eventually(CHANGE_DEADLINE, || is_ok(&call(pod, to))).is_some(),
            "{who} not let back in after the policies were removed{}",
            logs()
        );
    }
    session
        .round_trip("after authorization changes")
        .expect("the first client's connection survived every authorization change");

    // 12. Rotation: with a 60 s lifetime the proxy renews at about half; the open connection
    //    survives, a new one gets the new certificate.
    let rotated = eventually(Duration::from_secs(50), || {
        mesh::certificate(&server).is_ok_and(|(_, serial)| serial != first_serial)
    });
    assert!(
        rotated.is_some(),
        "the server proxy never renewed its certificate{}",
        logs()
    );
    session
        .round_trip("after rotation")
        .expect("open connection survives rotation");
    assert!(
        is_ok(&call(&client, vip)),
        "a new connection after rotation{}",
        logs()
    );

    // 13. SIGTERM: the proxy drains and exits 0.
    drop(session);
    let status = mesh
        .lab
        .stop(&mesh::proxy_name("client"), Duration::from_secs(10))
        .expect("SIGTERM");
    assert!(
        status.is_some_and(|s| s.success()),
        "the proxy did not exit 0 after SIGTERM: {status:?}{}",
        logs()
    );
}
