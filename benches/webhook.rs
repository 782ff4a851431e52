//! Injection webhook latency over HTTPS with keep-alive, at a fixed rate (open loop), against
//! a reference endpoint on the same server in the same run.
//!
//! Run with `CARGO_TARGET_DIR=/work/target-webhook cargo bench --bench webhook`
//! (`-- --seconds N --rate R` to change the defaults, 10 s at 500 requests/s per phase).
//!
//! The server is the real one (`palisade::webhook::server::serve`, TLS 1.3 with the serving
//! certificate from an in-memory CA, ALPN h2 + http/1.1); the client is hyper over rustls
//! (aws-lc-rs) trusting only that CA. Each phase sends the API-server-shaped AdmissionReview
//! fixture (`tests/fixtures/webhook/admission-review.json`, a Deployment's pod with a probe
//! to rewrite) either to `POST /inject` or to `POST /reference`, which reads the same body and
//! answers a constant: the difference is the cost of parsing, deciding and encoding the patch.
//! Latency runs from the moment a request was due (not when it was sent) to the last byte
//! of the response, so a stalled server cannot hide queueing (coordinated omission).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::routing::post;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade::ca::serving::{self, ServingResolver, ServingSpec};
use palisade::ca::{Authority, IssuancePolicy, SigningCa, TrustBundle};
use palisade::metrics::Metrics;
use palisade::webhook::InjectionConfig;
use palisade::webhook::namespaces::StaticNamespaces;
use palisade::webhook::server::{self, Injector};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

const WARMUP: Duration = Duration::from_secs(1);

struct Phase {
    name: &'static str,
    path: &'static str,
    h2: bool,
}

/// One request: when it was due, when it was sent, how long it took (None: failed).
struct Sample {
    due_to_done: Duration,
    send_to_done: Option<Duration>,
}

struct Stats {
    sent: usize,
    errors: usize,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
    /// p99 measured from when the request was due (includes client-side scheduling delay).
    p99_due: Duration,
}

fn stats(samples: &[Sample]) -> Stats {
    let mut send: Vec<Duration> = samples.iter().filter_map(|s| s.send_to_done).collect();
    let mut due: Vec<Duration> = samples
        .iter()
        .filter(|s| s.send_to_done.is_some())
        .map(|s| s.due_to_done)
        .collect();
    send.sort_unstable();
    due.sort_unstable();
    Stats {
        sent: samples.len(),
        errors: samples.len() - send.len(),
        p50: percentile(&send, 50.0),
        p90: percentile(&send, 90.0),
        p99: percentile(&send, 99.0),
        max: send.last().copied().unwrap_or_default(),
        p99_due: percentile(&due, 99.0),
    }
}

fn authority() -> Arc<Authority> {
    let (key, cert) = palisade::ca::authority::generate_root(SystemTime::now()).expect("root");
    let der = CertificateDer::from_pem_slice(cert.as_bytes()).expect("root PEM");
    let signing = SigningCa::new(&key, der.clone(), vec![]).expect("signing CA");
    Arc::new(Authority::new(
        signing,
        TrustBundle::new(der),
        IssuancePolicy::default(),
        Metrics::new().ca,
    ))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

async fn run_phase(
    addr: SocketAddr,
    root_pem: &str,
    body: Bytes,
    phase: &Phase,
    rate: u64,
    seconds: u64,
) -> Vec<Sample> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.expect("root")).expect("root cert");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    // Without TCP_NODELAY, HTTP/2's separate HEADERS and DATA writes meet Nagle's algorithm
    // and delayed ACKs (tens of milliseconds per request).
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let connector = if phase.h2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let url = format!("https://localhost:{}{}", addr.port(), phase.path);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Sample)>();
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let total = WARMUP + Duration::from_secs(seconds);
    let mut due = Instant::now();
    while start.elapsed() < total {
        ticker.tick().await;
        due += period;
        let scheduled = due - period;
        let (client, url, body, tx) = (client.clone(), url.clone(), body.clone(), tx.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let req = Request::builder()
                .method(Method::POST)
                .uri(&url)
                .header("content-type", "application/json")
                .body(Full::new(body))
                .expect("request");
            let ok = match client.request(req).await {
                Ok(resp) if resp.status() == StatusCode::OK => {
                    resp.into_body().collect().await.is_ok()
                }
                _ => false,
            };
            let sample = Sample {
                due_to_done: scheduled.elapsed(),
                send_to_done: ok.then(|| sent.elapsed()),
            };
            let _ = tx.send((scheduled, sample));
        });
    }
    drop(tx);
    let mut samples = Vec::new();
    while let Some((scheduled, sample)) = rx.recv().await {
        if scheduled >= start + WARMUP {
            samples.push(sample);
        }
    }
    samples
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let rate = arg("--rate", 500);
    let seconds = arg("--seconds", 10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        palisade::server::install_crypto_provider();
        let authority = authority();
        let spec = ServingSpec::for_service("palisade", "palisade-system", true);
        let cert = serving::issue(&authority, &spec).expect("serving certificate");
        let (_cert_tx, cert_rx) = tokio::sync::watch::channel(cert.key);
        let labels = BTreeMap::from([("palisade.dev/inject".into(), "enabled".into())]);
        let injector = Arc::new(Injector {
            config: Arc::new(InjectionConfig::default()),
            namespaces: Arc::new(StaticNamespaces(BTreeMap::from([("shop".into(), labels)]))),
            metrics: Default::default(),
        });
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/webhook/admission-review.json");
        let body = Bytes::from(std::fs::read(path).expect("fixture"));

        // The review itself, in process: parse, decide, encode the patch.
        const IN_PROCESS: u32 = 20_000;
        let started = Instant::now();
        for _ in 0..IN_PROCESS {
            std::hint::black_box(injector.review(&body).await.expect("review"));
        }
        println!(
            "in process (no network): {:.1} µs per review (mean of {IN_PROCESS})",
            started.elapsed().as_secs_f64() * 1e6 / f64::from(IN_PROCESS)
        );

        let router = server::router(injector).route(
            "/reference",
            post(|body: Bytes| async move {
                // Same body read, constant answer of similar size to a skip response.
                let _ = body.len();
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"x","allowed":true}}"#
            }),
        );
        let tls = palisade::net::tls::server_config(
            Arc::new(ServingResolver::new(cert_rx)),
            None,
            &server::ALPN,
        )
        .expect("TLS config");
        let (listener, addr) = palisade::net::bind(SocketAddr::from(([127, 0, 0, 1], 0)), "webhook listener")
            .await
            .expect("bind");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = server::serve(listener, Arc::new(tls), router, async move {
            let _ = stop_rx.await;
        });
        let root = authority.trust_bundle().to_pem();

        println!(
            "webhook latency: {rate} requests/s for {seconds} s per phase (after {} s warm-up), \
             body {} bytes",
            WARMUP.as_secs(),
            body.len()
        );
        let phases = [
            Phase { name: "reference, HTTP/2", path: "/reference", h2: true },
            Phase { name: "inject, HTTP/2", path: "/inject", h2: true },
            Phase { name: "reference, HTTP/1.1", path: "/reference", h2: false },
            Phase { name: "inject, HTTP/1.1", path: "/inject", h2: false },
        ];
        // Each phase runs as two halves in A-B-B-A order, so drift in machine load over the
        // run weighs on the reference and the webhook alike.
        let half = seconds.div_ceil(2);
        let mut samples: Vec<Vec<Sample>> = phases.iter().map(|_| Vec::new()).collect();
        for pair in [[0, 1], [1, 0], [2, 3], [3, 2]] {
            for i in pair {
                let s = run_phase(addr, &root, body.clone(), &phases[i], rate, half).await;
                samples[i].extend(s);
            }
        }
        println!("| phase | requests | errors | p50 | p90 | p99 | max | p99 from due time |");
        println!("|---|---|---|---|---|---|---|---|");
        let mut results = Vec::new();
        for (phase, samples) in phases.iter().zip(&samples) {
            let s = stats(samples);
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                phase.name,
                s.sent,
                s.errors,
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.max),
                ms(s.p99_due)
            );
            results.push(s);
        }
        for (i, proto) in [(0, "HTTP/2"), (2, "HTTP/1.1")] {
            let (r, w) = (&results[i], &results[i + 1]);
            println!(
                "{proto}: inject / reference: p50 {:.2}x, p99 {:.2}x",
                w.p50.as_secs_f64() / r.p50.as_secs_f64().max(1e-9),
                w.p99.as_secs_f64() / r.p99.as_secs_f64().max(1e-9)
            );
        }
        let _ = stop_tx.send(());
        let _ = task.await;
    });
}
