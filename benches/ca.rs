//! CA issuance throughput through the real gRPC server (TLS, warm HTTP/2 connections, cached
//! token authentication) against the raw ECDSA P-256 sign+verify rate of aws-lc-rs, measured
//! in the same run on the same machine. One issuance costs one verify (the CSR) and one sign
//! (the certificate), so sign+verify pairs per second is the ceiling.
//!
//! Run: `cargo bench --bench ca` (env PALISADE_BENCH_SECS, default 5, sets each phase's length).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use palisade::auth::Identity;
use palisade::auth::jwt::LocalJwtKey;
use palisade::server;
use palisade::xds::proto::istio_v1_auth::IstioCertificateRequest;
use palisade::xds::proto::istio_v1_auth::istio_certificate_service_client::IstioCertificateServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const CONNECTIONS: usize = 4;
const IN_FLIGHT_PER_CONNECTION: usize = 16;

/// CPU time the calling thread has used (scheduler nanoseconds).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    Duration::from_nanos(
        stat.split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

/// Raw verify+sign pairs: (per wall-clock second over all threads, per CPU-second).
fn raw_rate(threads: usize, secs: Duration) -> (f64, f64) {
    let done = Arc::new(AtomicU64::new(0));
    let cpu_nanos = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (done, cpu_nanos) = (done.clone(), cpu_nanos.clone());
            s.spawn(move || {
                let cpu_start = thread_cpu();
                let rng = SystemRandom::new();
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                    .expect("key generation");
                let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
                    .expect("key");
                // About the size of a certificate's to-be-signed part.
                let message = vec![0x5au8; 400];
                let presigned = key.sign(&rng, &message).expect("sign");
                let public = UnparsedPublicKey::new(
                    &ECDSA_P256_SHA256_ASN1,
                    key.public_key().as_ref().to_vec(),
                );
                let mut n = 0u64;
                while start.elapsed() < secs {
                    public.verify(&message, presigned.as_ref()).expect("verify");
                    let sig = key.sign(&rng, &message).expect("sign");
                    std::hint::black_box(sig);
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
                let cpu = thread_cpu().saturating_sub(cpu_start);
                cpu_nanos.fetch_add(cpu.as_nanos() as u64, Ordering::Relaxed);
            });
        }
    });
    let n = done.load(Ordering::Relaxed) as f64;
    let cpu = Duration::from_nanos(cpu_nanos.load(Ordering::Relaxed)).as_secs_f64();
    (n / start.elapsed().as_secs_f64(), n / cpu.max(1e-9))
}

/// Issuance without the network: CSR parse + verify + sign + PEM, one thread, per CPU-second.
fn core_rate(secs: Duration) -> f64 {
    let now = SystemTime::now();
    let (key, cert) = palisade::ca::authority::generate_root(now).expect("root");
    let cert = palisade::ca::pem::parse_certs(cert.as_bytes())
        .expect("pem")
        .remove(0);
    let ca = palisade::ca::SigningCa::new(&key, cert, Vec::new()).expect("ca");
    let policy = palisade::ca::IssuancePolicy::default();
    let id = Identity::new("bench", "core").expect("id");
    let csrs: Vec<String> = (0..64)
        .map(|_| {
            let key = rcgen::KeyPair::generate().expect("key");
            let params = rcgen::CertificateParams::default();
            params
                .serialize_request(&key)
                .expect("csr")
                .pem()
                .expect("pem")
        })
        .collect();
    let (start, cpu_start) = (Instant::now(), thread_cpu());
    let mut n = 0usize;
    while start.elapsed() < secs {
        let issued = ca
            .issue_workload(&policy, &id, &csrs[n % csrs.len()], 0, now)
            .expect("issue");
        std::hint::black_box(issued);
        n += 1;
    }
    n as f64
        / thread_cpu()
            .saturating_sub(cpu_start)
            .as_secs_f64()
            .max(1e-9)
}

/// CPU time (user + system, all threads) the process `pid` has used so far, from the
/// scheduler's nanosecond counters.
fn process_cpu(pid: u32) -> Duration {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

struct E2e {
    certs_per_sec: f64,
    failed: u64,
    server_cpu_per_cert: Duration,
}

/// The real `palisade controller --standalone` binary as a separate process (so its CPU time
/// can be measured apart from the client's), driven over TLS by tonic clients in this process.
async fn end_to_end(secs: Duration, server_cpu: Option<usize>) -> E2e {
    let dir = tempfile_dir();
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
    };
    let (grpc, monitor) = (free_port(), free_port());
    let mut command = match server_cpu {
        // Pinned: the server gets one core to itself (and so one tokio worker).
        Some(cpu) => {
            let mut c = tokio::process::Command::new("taskset");
            c.args(["-c", &cpu.to_string(), env!("CARGO_BIN_EXE_palisade")]);
            c
        }
        None => tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade")),
    };
    let mut child = command
        .args(["controller", "--standalone", "--state-dir"])
        .arg(&dir)
        .arg("--config-dir")
        .arg(dir.join("config"))
        .args([
            "--grpc-addr",
            &grpc.to_string(),
            "--monitor-addr",
            &monitor.to_string(),
        ])
        .args(["--webhook-addr", "127.0.0.1:0"])
        // Issuance logs one line per certificate (that cost is measured); not shown here.
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("controller starts");
    let pid = child.id().expect("pid");
    let root_path = dir.join(server::ROOT_CERT_FILE);
    let deadline = Instant::now() + Duration::from_secs(30);
    let root = loop {
        if let Ok(root) = std::fs::read_to_string(&root_path)
            && tokio::net::TcpStream::connect(grpc).await.is_ok()
        {
            break root;
        }
        assert!(Instant::now() < deadline, "controller did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let token = LocalJwtKey::load_or_create(&dir)
        .expect("token key")
        .issue(
            &Identity::new("bench", "client").expect("id"),
            "palisade-ca",
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .expect("token");
    let csrs: Arc<Vec<String>> = Arc::new(
        (0..256)
            .map(|_| {
                let key = rcgen::KeyPair::generate().expect("key");
                let params = rcgen::CertificateParams::default();
                params
                    .serialize_request(&key)
                    .expect("csr")
                    .pem()
                    .expect("pem")
            })
            .collect(),
    );
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&root))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{grpc}"))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect");
        clients.push(IstioCertificateServiceClient::new(channel));
    }
    let run = |duration: Duration| {
        let (clients, csrs, token) = (clients.clone(), csrs.clone(), token.clone());
        async move {
            let done = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let start = Instant::now();
            let mut tasks = Vec::new();
            for (c, client) in clients.iter().enumerate() {
                for i in 0..IN_FLIGHT_PER_CONNECTION {
                    let (mut client, csrs, token) = (client.clone(), csrs.clone(), token.clone());
                    let (done, failed) = (done.clone(), failed.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut k = c * IN_FLIGHT_PER_CONNECTION + i;
                        while start.elapsed() < duration {
                            let mut req = tonic::Request::new(IstioCertificateRequest {
                                csr: csrs[k % csrs.len()].clone(),
                                validity_duration: 0,
                                metadata: None,
                            });
                            let auth = format!("Bearer {token}").parse().expect("header");
                            req.metadata_mut().insert("authorization", auth);
                            match client.create_certificate(req).await {
                                Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                            };
                            k += 7;
                        }
                    }));
                }
            }
            for t in tasks {
                t.await.expect("task");
            }
            let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
            (rate, failed.load(Ordering::Relaxed))
        }
    };
    // Warm-up: connections, caches, allocator.
    run(Duration::from_secs(1)).await;
    let cpu_before = process_cpu(pid);
    let started = Instant::now();
    let (certs_per_sec, failed) = run(secs).await;
    let certs = certs_per_sec * started.elapsed().as_secs_f64();
    let server_cpu = process_cpu(pid).saturating_sub(cpu_before);
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    E2e {
        certs_per_sec,
        failed,
        server_cpu_per_cert: server_cpu.div_f64(certs.max(1.0)),
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("palisade-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn main() {
    palisade::server::install_crypto_provider();
    let secs = Duration::from_secs(
        std::env::var("PALISADE_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (raw1, raw1_cpu) = raw_rate(1, secs);
    let (raw_all, _) = raw_rate(cores, secs);
    let core = core_rate(secs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let e2e = runtime.block_on(end_to_end(secs, None));
    drop(runtime);
    // Pinned run: server alone on CPU 0, this process (the client) on CPU 1, so the server's
    // single core is compared with the raw single-thread rate. Last, since it pins us.
    let pinned = (cores >= 2).then(|| {
        let me = std::process::id().to_string();
        let ok = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", "1", &me])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "taskset is needed for the pinned run (util-linux)");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(end_to_end(secs, Some(0)))
    });
    let per_core = 1.0 / e2e.server_cpu_per_cert.as_secs_f64();
    println!("cores: {cores}, phase length: {} s", secs.as_secs());
    println!(
        "raw ECDSA P-256 verify+sign, 1 thread:  {raw1:>8.0} pairs/s ({raw1_cpu:.0} per CPU-second)"
    );
    println!("raw ECDSA P-256 verify+sign, {cores} threads: {raw_all:>8.0} pairs/s");
    println!(
        "issuance without network, 1 thread: {core:.0} certs per CPU-second ({:.1}% of raw)",
        100.0 * core / raw1_cpu
    );
    println!(
        "end-to-end CreateCertificate, client and server sharing the machine \
         ({CONNECTIONS} conns x {IN_FLIGHT_PER_CONNECTION} in flight): {:.0} certs/s ({} failed)",
        e2e.certs_per_sec, e2e.failed
    );
    println!(
        "server CPU per certificate: {:.1} us -> {per_core:.0} certs per server CPU-second",
        e2e.server_cpu_per_cert.as_secs_f64() * 1e6
    );
    println!(
        "ratio server issuance / raw, both per CPU-second: {:.1}%",
        100.0 * per_core / raw1_cpu
    );
    println!(
        "ratio end-to-end (client included) / raw {cores} threads: {:.1}%",
        100.0 * e2e.certs_per_sec / raw_all
    );
    if let Some(p) = pinned {
        println!(
            "pinned: server alone on CPU 0, client on CPU 1: {:.0} certs/s ({} failed), \
             server CPU per certificate {:.1} us",
            p.certs_per_sec,
            p.failed,
            p.server_cpu_per_cert.as_secs_f64() * 1e6
        );
        println!(
            "ratio pinned end-to-end / raw 1 thread: {:.1}%",
            100.0 * p.certs_per_sec / raw1
        );
    }
}
