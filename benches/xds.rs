//! Policy distribution at scale: 10,000 simulated proxies, each with its own workload
//! certificate on its own TLS connection and ADS stream, against one controller; one
//! PeerAuthentication change that affects 1,000 of them.
//!
//! Measures: time from the change until every affected stream has its push (p50/p99/max),
//! how many unaffected streams got anything (must be 0), and the controller's RSS before the
//! proxies connect and with all 10,000 streams open. The controller (view registry + ADS
//! server on the real TLS listener) runs in a child process of this bench, so its RSS is its
//! own and each process stays under the 20,000 open-file limit.
//!
//! Inventory: 50 namespaces, 500 Services (ports http 80 -> named port 8080, grpc 9090), 20
//! meshed pods per Service = 10,000 pods; namespace ns-00 holds 50 Services (1,000 pods), the
//! other 450 are spread over ns-01..ns-49. A mesh-wide STRICT PeerAuthentication is in force;
//! the change adds `ns-00/default` PERMISSIVE.
//!
//! Run: `cargo bench --bench xds` (env PALISADE_BENCH_PROXIES overrides 10,000 for a quick run).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use palisade::api::PeerAuthenticationSpec;
use palisade::ca::authority::{IssuancePolicy, SigningCa, generate_root};
use palisade::ca::{Authority, Identity, TrustBundle};
use palisade::controller::inventory::{
    EndpointRecord, Inventory, ObjectKey, PodRecord, PolicyRecord, ServiceRecord,
};
use palisade::policy::{
    MeshConfig, NamespaceInfo, Policy, PolicyMeta, ServiceInfo, ServicePortInfo, TLS_MODE_LABEL,
    TLS_MODE_PALISADE, TargetPort, Workload, WorkloadPort,
};
use palisade::xds::views::VIEW_TYPES;
use prost::Message;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_stream::wrappers::ReceiverStream;

const ROLE_ENV: &str = "PALISADE_BENCH_XDS_ROLE";
const DIR_ENV: &str = "PALISADE_BENCH_XDS_DIR";
const NAMESPACES: usize = 50;
const SERVICES: usize = 500;
const PODS_PER_SERVICE: usize = 20;
/// Services of ns-00 (its pods are the ones the change affects).
const BIG_NAMESPACE_SERVICES: usize = 50;
const CONNECT_CONCURRENCY: usize = 64;

fn namespace_of(service: usize) -> String {
    if service < BIG_NAMESPACE_SERVICES {
        "ns-00".into()
    } else {
        format!(
            "ns-{:02}",
            1 + (service - BIG_NAMESPACE_SERVICES) % (NAMESPACES - 1)
        )
    }
}

fn pod_ip(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        1,
        (index / 256) as u8,
        (index % 256) as u8,
    ))
}

/// (namespace, pod, service account, ip) of every pod, service-major.
fn pods() -> Vec<(String, String, String, IpAddr)> {
    let mut out = Vec::with_capacity(SERVICES * PODS_PER_SERVICE);
    for s in 0..SERVICES {
        for r in 0..PODS_PER_SERVICE {
            out.push((
                namespace_of(s),
                format!("svc-{s}-{r}"),
                format!("svc-{s}"),
                pod_ip(s * PODS_PER_SERVICE + r),
            ));
        }
    }
    out
}

fn pa(
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
    seq: u64,
) -> Arc<PolicyRecord<PeerAuthenticationSpec>> {
    Arc::new(PolicyRecord {
        policy: Policy {
            meta: PolicyMeta {
                namespace: namespace.into(),
                name: name.into(),
                creation_timestamp: None,
                seq,
            },
            spec: serde_json::from_value(spec).expect("spec"),
        },
        generation: None,
        status: None,
    })
}

/// The inventory before the change.
fn inventory() -> Inventory {
    let mut inv = Inventory::default();
    for n in 0..NAMESPACES {
        let name = format!("ns-{n:02}");
        inv.namespaces.insert(
            name.clone(),
            Arc::new(NamespaceInfo {
                name,
                labels: BTreeMap::new(),
            }),
        );
    }
    let ports = vec![
        (Some("http".to_string()), 8080u16),
        (Some("grpc".to_string()), 9090u16),
    ];
    for (i, (ns, name, sa, ip)) in pods().into_iter().enumerate() {
        let service = i / PODS_PER_SERVICE;
        let labels = BTreeMap::from([
            ("app".to_string(), format!("svc-{service}")),
            (TLS_MODE_LABEL.to_string(), TLS_MODE_PALISADE.to_string()),
        ]);
        let record = PodRecord {
            workload: Workload {
                namespace: ns.clone(),
                name: name.clone(),
                labels,
                service_account: sa,
                ports: ports
                    .iter()
                    .map(|(n, p)| WorkloadPort {
                        name: n.clone(),
                        port: *p,
                    })
                    .collect(),
            },
            ips: vec![ip],
            active: true,
        };
        inv.pods.insert(ObjectKey::new(ns, name), Arc::new(record));
    }
    for s in 0..SERVICES {
        let key = ObjectKey::new(namespace_of(s), format!("svc-{s}"));
        let info = ServiceInfo {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            selector: BTreeMap::from([("app".to_string(), format!("svc-{s}"))]),
            ports: vec![
                ServicePortInfo {
                    name: Some("http".into()),
                    port: 80,
                    target_port: TargetPort::Name("http".into()),
                },
                ServicePortInfo {
                    name: Some("grpc".into()),
                    port: 9090,
                    target_port: TargetPort::Number(9090),
                },
            ],
        };
        let vip = IpAddr::V4(Ipv4Addr::new(10, 96, (s / 256) as u8, (s % 256) as u8));
        inv.services.insert(
            key.clone(),
            Arc::new(ServiceRecord {
                info,
                cluster_ips: vec![vip],
            }),
        );
        let endpoints = (0..PODS_PER_SERVICE)
            .map(|r| EndpointRecord {
                ip: pod_ip(s * PODS_PER_SERVICE + r),
                pod: Some(ObjectKey::new(
                    key.namespace.clone(),
                    format!("svc-{s}-{r}"),
                )),
                ready: true,
                ports: ports.clone(),
            })
            .collect();
        inv.endpoints.insert(key, Arc::new(endpoints));
    }
    inv.peer_authentications.insert(
        ObjectKey::new("palisade-system", "default"),
        pa(
            "palisade-system",
            "default",
            serde_json::json!({"mtls": {"mode": "STRICT"}}),
            1,
        ),
    );
    inv
}

fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn authority(dir: &std::path::Path) -> Arc<Authority> {
    let cert_pem = std::fs::read_to_string(dir.join("root-cert.pem")).expect("root cert");
    let key_pem = std::fs::read_to_string(dir.join("root-key.pem")).expect("root key");
    let bundle = TrustBundle::from_pem(cert_pem.as_bytes()).expect("bundle");
    let root = bundle.roots()[0].clone();
    let signing = SigningCa::new(&key_pem, root.clone(), vec![]).expect("signing CA");
    Arc::new(Authority::new(
        signing,
        bundle,
        IssuancePolicy::default(),
        Default::default(),
    ))
}

/// The controller: view registry + ADS on a TLS listener; commands on stdin.
fn server() {
    let dir = std::path::PathBuf::from(std::env::var(DIR_ENV).expect("dir"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let authority = authority(&dir);
        let before = Arc::new(inventory());
        let mut after = (*before).clone();
        after.peer_authentications.insert(
            ObjectKey::new("ns-00", "default"),
            pa(
                "ns-00",
                "default",
                serde_json::json!({"mtls": {"mode": "PERMISSIVE"}}),
                2,
            ),
        );
        let after = Arc::new(after);
        let (inv_tx, inv_rx) = tokio::sync::watch::channel(before);
        let started = Instant::now();
        let registry = palisade::xds::registry::Registry::start(
            inv_rx,
            authority.subscribe_bundle(),
            MeshConfig::default(),
        );
        let first_compute = started.elapsed();
        let ads = palisade::xds::ads::AdsService::new(
            Arc::new(registry.clone()),
            "cluster.local",
            Default::default(),
        )
        .into_server();
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spec =
            palisade::ca::serving::ServingSpec::for_service("palisade", "palisade-system", true)
                .with_listen_addresses(&[addr]);
        let (serving, _renewal) =
            palisade::ca::serving::start(authority.clone(), spec).expect("serving");
        let tls = palisade::net::tls::server_config(
            Arc::new(palisade::ca::serving::ServingResolver::new(serving)),
            Some(authority.trust_bundle().root_store()),
            &[b"h2"],
        )
        .expect("tls");
        let incoming = ReceiverStream::new(palisade::net::tls::incoming(listener, Arc::new(tls)));
        tokio::spawn(
            tonic::transport::Server::builder()
                .max_concurrent_streams(256)
                .http2_keepalive_interval(Some(Duration::from_secs(60)))
                .add_service(ads)
                .serve_with_incoming(incoming),
        );
        println!("listening {addr} {}", first_compute.as_millis());
        let mut lines =
            tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
        while let Ok(Some(line)) = lines.next_line().await {
            match line.trim() {
                "rss" => {
                    let (rss, hwm) = rss_kib();
                    println!("rss {rss} {hwm} {}", registry.subscribers());
                }
                "change" => {
                    inv_tx.send_replace(after.clone());
                    println!("changed");
                }
                _ => break,
            }
        }
    });
}

/// One simulated proxy's counters, after the baseline.
#[derive(Default)]
struct ProxyStats {
    responses: AtomicU32,
    /// Nanoseconds after the change of the first response (0: none).
    first_at: AtomicU64,
}

struct Child {
    process: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Child {
    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("to child");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("from child");
        line.trim().to_string()
    }
}

/// The fields of a `DiscoveryResponse` a simulated proxy needs to ACK; prost skips the rest
/// (field 2, the resources) without allocating them.
#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

/// Sends one gRPC-framed request on the stream (h2 queues it; these are small).
fn send_request(send: &mut h2::SendStream<Bytes>, request: DiscoveryRequest) {
    let message = request.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    send.send_data(Bytes::from(frame), false)
        .expect("send request");
}

/// A minimal ADS client on raw HTTP/2 (the h2 crate under tonic): 10,000 tonic clients would
/// each keep a decode buffer as large as the largest response (~3 MiB here) for the stream's
/// life, which is the client's memory, not the controller's, and does not fit this machine.
/// This one frames gRPC messages itself and frees each message once its header is read.
struct LightStream {
    body: h2::RecvStream,
    send: h2::SendStream<Bytes>,
    buf: BytesMut,
    /// Keeps the connection's driver alive with the stream.
    _conn: tokio::task::JoinHandle<()>,
}

impl LightStream {
    async fn open(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, node_id: &str) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .expect("tls handshake");
        let (client, conn) = h2::client::Builder::new()
            .initial_window_size(256 * 1024)
            .initial_connection_window_size(256 * 1024)
            .handshake::<_, Bytes>(tls)
            .await
            .expect("h2 handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = http::Request::builder()
            .method("POST")
            .uri(format!(
                "https://{addr}/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let mut client = client.ready().await.expect("h2 ready");
        let (response, mut send) = client.send_request(request, false).expect("send request");
        for (t, type_url) in VIEW_TYPES.iter().enumerate() {
            send_request(
                &mut send,
                DiscoveryRequest {
                    node: (t == 0).then(|| Node {
                        id: node_id.to_string(),
                        ..Default::default()
                    }),
                    type_url: type_url.to_string(),
                    ..Default::default()
                },
            );
        }
        let response = response.await.expect("response headers");
        assert_eq!(response.status(), 200, "grpc over http/2");
        LightStream {
            body: response.into_body(),
            send,
            buf: BytesMut::new(),
            _conn: conn,
        }
    }

    fn ack(&mut self, r: &ResponseHeader) {
        send_request(
            &mut self.send,
            DiscoveryRequest {
                version_info: r.version_info.clone(),
                response_nonce: r.nonce.clone(),
                type_url: r.type_url.clone(),
                ..Default::default()
            },
        );
    }

    /// The next response's header and its encoded length; None when the stream ends.
    async fn next(&mut self) -> Option<(ResponseHeader, usize)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    let message = self.buf.split_to(len).freeze();
                    if self.buf.is_empty() {
                        // Give the (possibly ~3 MiB) allocation back.
                        self.buf = BytesMut::new();
                    }
                    let header = ResponseHeader::decode(message).expect("DiscoveryResponse");
                    return Some((header, len));
                }
                self.buf.reserve(5 + len - self.buf.len());
            }
            let chunk = self.body.data().await?.ok()?;
            let _ = self.body.flow_control().release_capacity(chunk.len());
            self.buf.extend_from_slice(&chunk);
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    if std::env::var(ROLE_ENV).as_deref() == Ok("server") {
        server();
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let proxies: usize = std::env::var("PALISADE_BENCH_PROXIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SERVICES * PODS_PER_SERVICE)
        .min(SERVICES * PODS_PER_SERVICE);
    let dir = tempfile::tempdir().expect("tempdir");
    let (key_pem, cert_pem) = generate_root(SystemTime::now()).expect("root");
    std::fs::write(dir.path().join("root-cert.pem"), &cert_pem).expect("write");
    std::fs::write(dir.path().join("root-key.pem"), &key_pem).expect("write");

    let mut process = Command::new(std::env::current_exe().expect("exe"))
        .env(ROLE_ENV, "server")
        .env(DIR_ENV, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("controller child");
    let stdin = process.stdin.take().expect("stdin");
    let stdout = BufReader::new(process.stdout.take().expect("stdout"));
    let mut child = Child {
        process,
        stdin,
        stdout,
    };
    let mut line = String::new();
    child.stdout.read_line(&mut line).expect("listening line");
    let mut words = line.split_whitespace().skip(1);
    let addr: SocketAddr = words.next().and_then(|a| a.parse().ok()).expect("address");
    let first_compute_ms = words.next().unwrap_or("?").to_string();

    // Every proxy's certificate, issued by the same CA the controller trusts.
    let issuing = Instant::now();
    let authority = authority(dir.path());
    let all_pods = pods();
    // Spread the proxies over every namespace; the first 1,000 pods (ns-00) are the affected.
    let chosen: Vec<usize> = (0..proxies)
        .map(|i| (i * all_pods.len() / proxies.max(1)).min(all_pods.len() - 1))
        .collect();
    let identities: Vec<(
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        String,
        bool,
    )> = chosen
        .iter()
        .map(|&i| {
            let (ns, pod, sa, _) = &all_pods[i];
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
            let csr = rcgen::CertificateParams::new(Vec::<String>::new())
                .expect("params")
                .serialize_request(&key)
                .expect("csr")
                .pem()
                .expect("pem");
            let identity = Identity::new(ns, sa).expect("identity");
            let issued = authority.issue(&identity, &csr, 0, "bench").expect("issue");
            let chain = CertificateDer::pem_slice_iter(issued.chain_pem.concat().as_bytes())
                .map(|c| c.expect("chain pem"))
                .collect();
            let key = PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
            (chain, key, format!("{ns}/{pod}"), ns == "ns-00")
        })
        .collect();
    let issue_secs = issuing.elapsed().as_secs_f64();

    let before = child.ask("rss");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let stats: Arc<Vec<ProxyStats>> =
        Arc::new((0..proxies).map(|_| ProxyStats::default()).collect());
    let epoch = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(der.expect("root pem")).expect("root");
    }
    let roots = Arc::new(roots);
    let connecting = Instant::now();
    let initial_bytes = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let semaphore = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
        let mut joins = Vec::with_capacity(proxies);
        for (i, (chain, key, node_id, _)) in identities.iter().enumerate() {
            let permit = semaphore.clone().acquire_owned().await.expect("semaphore");
            let mut tls = rustls::ClientConfig::builder()
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .expect("client tls");
            tls.alpn_protocols = vec![b"h2".to_vec()];
            let (stats, epoch, initial_bytes) =
                (stats.clone(), epoch.clone(), initial_bytes.clone());
            let node_id = node_id.clone();
            joins.push(tokio::spawn(async move {
                let mut stream = LightStream::open(addr, Arc::new(tls), &node_id).await;
                let mut seen = 0;
                while seen < VIEW_TYPES.len() {
                    let (r, len) = stream.next().await.expect("initial response");
                    initial_bytes.fetch_add(len as u64, Ordering::Relaxed);
                    stream.ack(&r);
                    seen += 1;
                }
                drop(permit);
                tokio::spawn(async move {
                    while let Some((r, _)) = stream.next().await {
                        let at = epoch
                            .get()
                            .map(|e| e.elapsed().as_nanos() as u64)
                            .unwrap_or(1);
                        let s = &stats[i];
                        s.responses.fetch_add(1, Ordering::Relaxed);
                        let _ = s.first_at.compare_exchange(
                            0,
                            at.max(1),
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                        stream.ack(&r);
                    }
                });
            }));
        }
        for j in joins {
            j.await.expect("proxy connected and synced");
        }
    });
    let connect_secs = connecting.elapsed().as_secs_f64();
    let with_streams = child.ask("rss");

    // Responses seen so far are the initial sync; count from the change on.
    for s in stats.iter() {
        s.responses.store(0, Ordering::Relaxed);
        s.first_at.store(0, Ordering::Relaxed);
    }
    let affected: Vec<usize> = (0..proxies).filter(|&i| identities[i].3).collect();
    epoch.set(Instant::now()).expect("epoch once");
    let changed = child.ask("change");
    assert_eq!(changed, "changed");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline
        && affected
            .iter()
            .any(|&i| stats[i].first_at.load(Ordering::Relaxed) == 0)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let all_in = epoch.get().map(|e| e.elapsed()).unwrap_or_default();
    // Give stray pushes (to streams that should get none) time to show up.
    std::thread::sleep(Duration::from_secs(3));
    let mut latencies: Vec<Duration> = affected
        .iter()
        .filter_map(|&i| match stats[i].first_at.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        })
        .collect();
    latencies.sort();
    let missing = affected.len() - latencies.len();
    let unaffected_with_push = (0..proxies)
        .filter(|&i| !identities[i].3 && stats[i].responses.load(Ordering::Relaxed) > 0)
        .count();
    let extra_to_affected = affected
        .iter()
        .filter(|&&i| stats[i].responses.load(Ordering::Relaxed) > 1)
        .count();
    let after_change = child.ask("rss");
    let _ = child.ask("quit");
    let _ = child.process.kill();
    let _ = child.process.wait();

    let parse = |line: &str| -> (u64, u64, u64) {
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect();
        (
            v.first().copied().unwrap_or(0),
            v.get(1).copied().unwrap_or(0),
            v.get(2).copied().unwrap_or(0),
        )
    };
    let (rss0, _, _) = parse(&before);
    let (rss1, hwm1, subs) = parse(&with_streams);
    let (rss2, hwm2, _) = parse(&after_change);
    let per_proxy = (rss1.saturating_sub(rss0)) as f64 / proxies.max(1) as f64;
    println!(
        "xds benchmark: {proxies} proxies, {} affected",
        affected.len()
    );
    println!(
        "  inventory: {NAMESPACES} namespaces, {SERVICES} services, {} pods",
        SERVICES * PODS_PER_SERVICE
    );
    println!("  first view computation in the controller: {first_compute_ms} ms");
    println!("  certificates issued in {issue_secs:.1} s");
    println!(
        "  connected and synced {proxies} streams in {connect_secs:.1} s ({:.0} MiB of resources received)",
        initial_bytes.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
    );
    println!("  registry subscribers: {subs}");
    println!(
        "  push latency (change -> affected stream has its push): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; all in after {:.1} ms; missing {missing}",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        all_in.as_secs_f64() * 1e3,
    );
    println!("  unaffected streams that got anything: {unaffected_with_push}");
    println!("  affected streams with more than one response: {extra_to_affected}");
    println!(
        "  controller RSS: before connecting {:.1} MiB; with {proxies} streams {:.1} MiB (peak {:.1} MiB); after the change {:.1} MiB (peak {:.1} MiB)",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        hwm1 as f64 / 1024.0,
        rss2 as f64 / 1024.0,
        hwm2 as f64 / 1024.0,
    );
    println!("  controller memory per connected proxy: {per_proxy:.1} KiB");
}
