//! The proxy pair on loopback against a direct connection, in one run: an echo app behind a
//! server proxy (inbound, STRICT, mesh mTLS) reached through a client proxy (outbound, Service
//! VIP -> endpoint). Request/response latency p50/p99 with 1 and 16 connections, bulk
//! throughput of one stream, new connections per second; each Palisade figure also as a ratio
//! to direct. `cargo bench --bench proxy` (figures and method: docs/performance.md).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use palisade::proxy::metrics::ProxyMetrics;
use palisade::proxy::orig_dst::OrigDstSource;
use palisade::proxy::state::{Policy, Shared};
use palisade::proxy::{Context, Ports, inbound, outbound};
use palisade::xds::proto::palisade_v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[path = "../tests/it/proxy_pki.rs"]
#[allow(dead_code)]
mod proxy_pki;
use proxy_pki::{Ca, TD};

const REQUESTS: usize = 2_000;
const MESSAGE: usize = 64;
const BULK: usize = 256 * 1024 * 1024;
const CONNECTIONS: usize = 1_000;

async fn echo_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn context(ca: &Ca, ns: &str, sa: &str, policy: Policy, orig: OrigDstSource) -> Context {
    let (_, identity) = watch::channel(Some(ca.identity(ns, sa)));
    let (_, trust) = watch::channel(ca.trust());
    let (_, policy) = watch::channel(Some(Arc::new(policy)));
    // The senders are dropped: the receivers keep the last value, which is all a bench needs.
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
    let mut ctx = Context::new(shared, ProxyMetrics::default(), TD, ports).unwrap();
    ctx.orig_dst = orig;
    ctx
}

/// Starts the pair; returns the client proxy's outbound address.
async fn pair(ca: &Ca, app: SocketAddr) -> SocketAddr {
    let strict = Policy::new(
        pb::InboundPolicy {
            default_mode: pb::MtlsMode::Strict as i32,
            ..Default::default()
        },
        vec![],
        vec![],
        BTreeMap::new(),
    );
    let server = context(ca, "b", "server", strict, OrigDstSource::Fixed(app));
    let inbound_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inbound_addr = inbound_listener.local_addr().unwrap();
    let (keep_in, rx) = watch::channel(false);
    std::mem::forget(keep_in); // never shut down during the run
    tokio::spawn(inbound::serve(inbound_listener, server, rx));
    let vip: SocketAddr = "10.96.0.1:80".parse().unwrap();
    let routes = Policy::new(
        pb::InboundPolicy::default(),
        vec![pb::Destination {
            fqdn: "server.b.svc.cluster.local".into(),
            vips: vec![vip.ip().to_string()],
            ports: vec![pb::ServicePort {
                port: 80,
                endpoints: vec![pb::Endpoint {
                    ip: inbound_addr.ip().to_string(),
                    port: u32::from(inbound_addr.port()),
                    meshed: true,
                    identity: "spiffe://cluster.local/ns/b/sa/server".into(),
                    tls: Some(pb::ClientTls {
                        mode: pb::client_tls::Mode::MeshMtls as i32,
                        expected_identities: vec!["spiffe://cluster.local/ns/b/sa/server".into()],
                        ..Default::default()
                    }),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
        vec![],
        BTreeMap::new(),
    );
    let client = context(ca, "a", "client", routes, OrigDstSource::Fixed(vip));
    let outbound_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outbound_addr = outbound_listener.local_addr().unwrap();
    let (keep_out, rx) = watch::channel(false);
    std::mem::forget(keep_out); // never shut down during the run
    tokio::spawn(outbound::serve(outbound_listener, client, rx));
    outbound_addr
}

/// Latencies (µs) of REQUESTS request/responses on each of `conns` connections at once.
async fn latency(to: SocketAddr, conns: usize) -> (Vec<f64>, f64) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(to).await.unwrap();
            s.set_nodelay(true).unwrap();
            let msg = [42u8; MESSAGE];
            let mut back = [0u8; MESSAGE];
            let mut out = Vec::with_capacity(REQUESTS);
            for _ in 0..REQUESTS {
                let t = Instant::now();
                s.write_all(&msg).await.unwrap();
                s.read_exact(&mut back).await.unwrap();
                out.push(t.elapsed().as_secs_f64() * 1e6);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rps = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    (all, rps)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

/// MiB/s of BULK bytes sent and echoed back on one connection.
async fn bulk(to: SocketAddr) -> f64 {
    let s = TcpStream::connect(to).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0;
        while sent < BULK {
            w.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        w.shutdown().await.unwrap();
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < BULK {
        let n = r.read(&mut buf).await.unwrap();
        assert!(n > 0, "echo ended early");
        got += n;
    }
    writer.await.unwrap();
    (BULK as f64 / (1024.0 * 1024.0)) / start.elapsed().as_secs_f64()
}

/// New connections per second, each with one 1-byte round trip.
async fn connections(to: SocketAddr) -> f64 {
    let start = Instant::now();
    for _ in 0..CONNECTIONS {
        let mut s = TcpStream::connect(to).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
    }
    CONNECTIONS as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let ca = Ca::new();
    let app = echo_app().await;
    let proxied = pair(&ca, app).await;
    // Warm up both paths.
    let _ = latency(app, 1).await;
    let _ = latency(proxied, 1).await;
    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        "measure", "direct", "palisade", "ratio"
    );
    for conns in [1, 16] {
        let (d, drps) = latency(app, conns).await;
        let (p, prps) = latency(proxied, conns).await;
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            let (a, b) = (pct(&d, q), pct(&p, q));
            println!(
                "{:<28} {a:>10.1}us {b:>10.1}us {:>8.2}",
                format!("latency {name}, {conns} conn"),
                b / a
            );
        }
        println!(
            "{:<28} {drps:>12.0} {prps:>12.0} {:>8.2}",
            format!("req/s, {conns} conn"),
            prps / drps
        );
    }
    let (d, p) = (bulk(app).await, bulk(proxied).await);
    println!(
        "{:<28} {d:>10.0}/s {p:>10.0}/s {:>8.2}",
        "bulk MiB, 1 stream",
        p / d
    );
    let (d, p) = (connections(app).await, connections(proxied).await);
    println!("{:<28} {d:>12.0} {p:>12.0} {:>8.2}", "connections/s", p / d);
}
