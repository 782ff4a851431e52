//! The proxy pair against haproxy and against no proxy at all, in one run on one machine, each
//! component its own process in its own network namespace (the lab of `palisade demo`):
//!
//! - direct: wrk in an unmeshed client pod → the app in an unmeshed server pod;
//! - haproxy pair: wrk → client-side haproxy on the client pod's loopback → mTLS (TLS 1.3, P-256
//!   certificates both ways, client certificate required and verified) → server-side haproxy
//!   on the server pod's address → the app on loopback; TCP mode on both sides;
//! - Palisade pair: wrk in a meshed client pod (`palisade init`'s redirect to the outbound
//!   listener) → a Service VIP → mesh mTLS → the meshed server pod (redirect to the inbound
//!   listener, STRICT) → the app; the standalone controller issues the certificates and policy,
//!   exactly as `palisade demo` and the end-to-end test deploy it;
//! - and, as a reference, a haproxy pair relaying plain TCP over the same hops (what two more
//!   processes on the path cost without any TLS).
//!
//! The app is the same code in both server pods (`pair/app.rs`, a tokio HTTP/1.1 keep-alive
//! server and a bulk source, in this process). Measured per set-up: wrk latency p50/p99 and
//! req/s with 1 and 16 connections, one stream's bulk throughput, new connections per second
//! (wrk with `Connection: close`: each a new TCP connection and, through a pair, two full TLS
//! handshakes), and each proxy's VmRSS idle and with 1,000 connections held open through it.
//!
//! Root only (network namespaces); needs haproxy and wrk (Debian packages). Method and figures:
//! docs/performance.md. `make bench-pair`, or `cargo bench --bench pair`; without root or a
//! tool it says what is missing (and fails under `--required`, as `make bench-pair` passes).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use palisade::demo::lab::{self, Pod};
use palisade::demo::mesh::{self, Mesh};

#[path = "pair/app.rs"]
mod app;
#[path = "pair/haproxy.rs"]
mod haproxy;
#[path = "pair/measure.rs"]
mod measure;

use measure::{Rss, Wrk};

const NS: &str = "bench";
const DIRECT_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 10);
const DIRECT_SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 11);
const MESH_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 21);
const MESH_SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 22);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 10);
const VIP_HTTP_PORT: u16 = 80;
const VIP_BULK_PORT: u16 = 81;
const BULK_BYTES: u64 = 1 << 30;
const HELD: usize = 1_000;
const READY: Duration = Duration::from_secs(60);
/// Positions in the list of set-ups.
const DIRECT: usize = 0;
const REFERENCE: usize = 1;
const HAPROXY: usize = 2;
const PALISADE: usize = 3;

fn manifests() -> Vec<(&'static str, String)> {
    let pod = |name: &str, sa: &str, ip: Ipv4Addr| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NS}\n  labels:\n    app: {name}\n    security.palisade.dev/tlsMode: palisade\nspec:\n  serviceAccountName: {sa}\n  containers:\n  - name: app\n    image: bench\n    ports:\n    - containerPort: {}\n      name: http\n    - containerPort: {}\n      name: bulk\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n",
            app::HTTP_PORT,
            app::BULK_PORT
        )
    };
    let workloads = [
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n"),
        pod("client", "client", MESH_CLIENT_IP),
        pod("server", "web", MESH_SERVER_IP),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {NS}\nspec:\n  clusterIP: {VIP}\n  selector:\n    app: server\n  ports:\n  - name: http\n    port: {VIP_HTTP_PORT}\n    targetPort: http\n  - name: bulk\n    port: {VIP_BULK_PORT}\n    targetPort: bulk\n"
        ),
    ]
    .join("---\n");
    let strict = format!(
        "apiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: {NS}\nspec:\n  mtls:\n    mode: STRICT\n"
    );
    vec![
        ("workloads.yaml", workloads),
        ("peer-authentication.yaml", strict),
    ]
}

/// One way from the client to the app.
struct Setup {
    name: &'static str,
    client: Pod,
    http: SocketAddr,
    /// The bulk source through the same path, if the set-up carries it.
    bulk: Option<SocketAddr>,
    /// (side, pid) of each proxy.
    proxies: Vec<(&'static str, u32)>,
}

/// Everything measured for one set-up.
#[derive(Default)]
struct Figures {
    one: Wrk,
    sixteen: Wrk,
    connect: Wrk,
    bulk_mib_s: Option<f64>,
    rss_idle: Vec<Rss>,
    rss_held: Vec<Rss>,
}

fn main() {
    let required = std::env::args().any(|a| a == "--required");
    if let Some(why) = measure::missing_tools() {
        eprintln!("SKIPPED: pair benchmark: {why}");
        std::process::exit(if required { 1 } else { 0 });
    }
    if let Err(e) = run() {
        eprintln!("pair benchmark failed: {e:#}");
        std::process::exit(1);
    }
}

fn seconds() -> anyhow::Result<u32> {
    match std::env::var("PALISADE_BENCH_SECS") {
        Ok(s) => s
            .parse()
            .context("PALISADE_BENCH_SECS must be whole seconds"),
        Err(_) => Ok(10),
    }
}

fn run() -> anyhow::Result<()> {
    let secs = seconds()?;
    // 1,000 held connections plus the app's side of them, plus wrk's: more than the usual 1,024.
    let nofile = measure::open_files_limit()?;
    if nofile < 4096 {
        bail!(
            "the open-file limit is {nofile}; the benchmark holds ~2,100 sockets: run `ulimit -n 8192` first"
        );
    }
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_palisade"));
    // An unpredictable name (this runs as root), readable by the proxies' uid.
    let scratch = tempfile::Builder::new()
        .prefix("palisade-pairbench-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .tempdir()
        .context("creating the scratch directory")?;
    let dir = scratch.path().to_path_buf();
    println!("{}", machine());
    println!("load average before: {}", measure::load_average());

    let mesh = Mesh::start("pb", &dir, &exe, &[], &manifests(), lab::Cleanup::default())?;
    let direct_client = mesh.add_pod("dclient", DIRECT_CLIENT_IP)?;
    let direct_server = mesh.add_pod("dserver", DIRECT_SERVER_IP)?;
    let mesh_client = mesh.add_meshed_pod("client", MESH_CLIENT_IP, NS, "client", &[])?;
    let mesh_server = mesh.add_meshed_pod("server", MESH_SERVER_IP, NS, "web", &[])?;
    for pod in [&direct_client, &direct_server, &mesh_client, &mesh_server] {
        // Connection churn (new connections per second) must not run out of ports.
        run_ok(pod.command("sysctl").args([
            "-q",
            "-w",
            "net.ipv4.ip_local_port_range=1024 65000",
            "net.ipv4.tcp_tw_reuse=1",
        ]))?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for pod in [&direct_server, &mesh_server] {
        let http = listen(pod, app::HTTP_PORT)?;
        let bulk = listen(pod, app::BULK_PORT)?;
        let _guard = runtime.enter();
        runtime.spawn(app::serve_http(tokio::net::TcpListener::from_std(http)?));
        runtime.spawn(app::serve_bulk(tokio::net::TcpListener::from_std(bulk)?));
    }

    let pki = haproxy::pki(&dir.join("haproxy"))?;
    let server_cfg = dir.join("haproxy/server.cfg");
    let client_cfg = dir.join("haproxy/client.cfg");
    std::fs::write(
        &server_cfg,
        haproxy::server_config(&pki, DIRECT_SERVER_IP, app::HTTP_PORT, app::BULK_PORT),
    )?;
    std::fs::write(&client_cfg, haproxy::client_config(&pki, DIRECT_SERVER_IP))?;
    for (name, pod, cfg) in [
        ("haproxy-server", &direct_server, &server_cfg),
        ("haproxy-client", &direct_client, &client_cfg),
    ] {
        let mut command = pod.command("haproxy");
        command.args(["-db", "-f"]).arg(cfg);
        mesh.lab.spawn(name, command)?;
    }
    mesh.wait_healthy(&mesh_client, READY)?;
    mesh.wait_healthy(&mesh_server, READY)?;

    let loopback = Ipv4Addr::LOCALHOST;
    let mut setups = vec![
        Setup {
            name: "direct",
            client: direct_client.clone(),
            http: SocketAddr::from((DIRECT_SERVER_IP, app::HTTP_PORT)),
            bulk: Some(SocketAddr::from((DIRECT_SERVER_IP, app::BULK_PORT))),
            proxies: vec![],
        },
        Setup {
            name: "haproxy pair, no TLS (reference)",
            client: direct_client.clone(),
            http: SocketAddr::from((loopback, haproxy::CLIENT_PLAIN_PORT)),
            // HTTP only: the reference is for latency and request rates.
            bulk: None,
            proxies: vec![],
        },
        Setup {
            name: "haproxy pair",
            client: direct_client.clone(),
            http: SocketAddr::from((loopback, haproxy::CLIENT_HTTP_PORT)),
            bulk: Some(SocketAddr::from((loopback, haproxy::CLIENT_BULK_PORT))),
            proxies: vec![],
        },
        Setup {
            name: "Palisade pair",
            client: mesh_client.clone(),
            http: SocketAddr::from((VIP, VIP_HTTP_PORT)),
            bulk: Some(SocketAddr::from((VIP, VIP_BULK_PORT))),
            proxies: vec![],
        },
    ];
    for setup in &setups {
        wait_path(&mesh, setup)?;
    }
    setups[HAPROXY].proxies = vec![
        ("client", measure::pid_in(&direct_client.netns, "haproxy")?),
        ("server", measure::pid_in(&direct_server.netns, "haproxy")?),
    ];
    setups[PALISADE].proxies = vec![
        (
            "client",
            measure::pid_in(&mesh_client.netns, palisade::cli::proxy::DEDICATED_EXE)?,
        ),
        (
            "server",
            measure::pid_in(&mesh_server.netns, palisade::cli::proxy::DEDICATED_EXE)?,
        ),
    ];

    if std::env::args().any(|a| a == "--hold") {
        return hold(&setups);
    }
    let mut figures: Vec<Figures> = setups.iter().map(|_| Figures::default()).collect();
    // Each measure for every set-up back to back, so drift in the machine's load weighs on
    // all alike.
    for (setup, f) in setups.iter().zip(&mut figures) {
        f.rss_idle = rss(setup)?;
        wrk(setup, 1, 2, &[])?; // warm-up
    }
    for (setup, f) in setups.iter().zip(&mut figures) {
        f.one = wrk(setup, 1, secs, &[])?;
    }
    for (setup, f) in setups.iter().zip(&mut figures) {
        f.sixteen = wrk(setup, 16, secs, &[])?;
    }
    for (setup, f) in setups.iter().zip(&mut figures) {
        if let Some(to) = setup.bulk {
            f.bulk_mib_s = Some(setup.client.enter(move || app::bulk(to, BULK_BYTES))??);
        }
    }
    for (setup, f) in setups.iter().zip(&mut figures) {
        f.connect = wrk(setup, 16, secs, &["-H", "Connection: close"])?;
    }
    for (setup, f) in setups.iter().zip(&mut figures) {
        if setup.proxies.is_empty() {
            continue;
        }
        let to = setup.http;
        let held = setup.client.enter(move || app::open_held(to, HELD))??;
        f.rss_held = rss(setup)?;
        drop(held);
    }
    println!("load average after: {}", measure::load_average());
    // The Palisade pair did what it is here for: every connection either proxy saw was mesh
    // mTLS (none passed through in plaintext).
    for pod in [&mesh_client, &mesh_server] {
        const NAME: &str = "palisade_proxy_connections_total";
        let all = mesh::counter(pod, NAME, &[])?;
        let mtls = mesh::counter(pod, NAME, &[("tls", "mesh")])?;
        if all == 0 || mtls != all {
            bail!(
                "{}: only {mtls} of {all} connections were mesh mTLS",
                pod.netns
            );
        }
        println!("{}: {all} connections, all mesh mTLS", pod.netns);
    }
    report(&setups, &figures);
    drop(runtime);
    drop(mesh);
    drop(scratch);
    Ok(())
}

/// `--hold`: keeps the set-ups up for profiling by hand (perf, strace) until a line
/// arrives on stdin, after printing where each one is.
fn hold(setups: &[Setup]) -> anyhow::Result<()> {
    for s in setups {
        println!(
            "{}: ip netns exec {} wrk http://{}/ (bulk {:?}); proxies {:?}",
            s.name, s.client.netns, s.http, s.bulk, s.proxies
        );
    }
    println!("holding; press Enter to tear down");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(())
}

/// A listening socket on `port` in `pod`, ready for tokio.
fn listen(pod: &Pod, port: u16) -> anyhow::Result<std::net::TcpListener> {
    let listener = pod.enter(move || -> std::io::Result<std::net::TcpListener> {
        let l = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })??;
    Ok(listener)
}

/// Polls one request through `setup` until it answers (the proxies have their certificates
/// and policy, haproxy listens).
fn wait_path(mesh: &Mesh, setup: &Setup) -> anyhow::Result<()> {
    const HAPROXIES: [&str; 2] = ["haproxy-client", "haproxy-server"];
    let logs = || -> String {
        HAPROXIES
            .iter()
            .map(|n| format!("{n}: {}", mesh.lab.log_tail(n, 1000)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let deadline = Instant::now() + READY;
    loop {
        // A haproxy that rejected its configuration exits at once: say so without waiting.
        if let Some((name, status)) = HAPROXIES
            .iter()
            .find_map(|n| mesh.lab.exited(n).map(|s| (n, s)))
        {
            bail!("{name} exited ({status}):\n{}", logs());
        }
        let to = setup.http;
        match setup.client.enter(move || app::probe(to))? {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                bail!("{} does not answer: {e:#}\n{}", setup.name, logs());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn run_ok(command: &mut Command) -> anyhow::Result<String> {
    let out = command.output().with_context(|| format!("{command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `wrk -t1 -c<connections> -d<secs>s --latency <extra> http://<setup>/` in the client pod.
fn wrk(setup: &Setup, connections: u32, secs: u32, extra: &[&str]) -> anyhow::Result<Wrk> {
    let out = run_ok(
        setup
            .client
            .command("wrk")
            .arg("-t1")
            .arg(format!("-c{connections}"))
            .arg(format!("-d{secs}s"))
            .arg("--latency")
            .args(extra)
            .arg(format!("http://{}/", setup.http)),
    )?;
    measure::parse_wrk(&out).with_context(|| format!("{}: wrk said:\n{out}", setup.name))
}

fn rss(setup: &Setup) -> anyhow::Result<Vec<Rss>> {
    setup
        .proxies
        .iter()
        .map(|(_, pid)| measure::rss_mib(*pid))
        .collect()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = |tool: &str, arg: &str| {
        Command::new(tool)
            .arg(arg)
            .output()
            .map(|o| {
                let text = [o.stdout, o.stderr].concat();
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default()
    };
    format!(
        "machine: {cores} x {cpu}, Linux {}\n{}\n{}",
        kernel.trim(),
        version("haproxy", "-v"),
        version("wrk", "-v")
    )
}

fn report(setups: &[Setup], figures: &[Figures]) {
    let row = |label: &str, value: &dyn Fn(&Figures) -> String| {
        let cells: Vec<String> = figures.iter().map(value).collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    let names: Vec<&str> = setups.iter().map(|s| s.name).collect();
    println!("\n| measure | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(setups.len()));
    row("latency p50, 1 connection", &|f| {
        format!("{:.1} µs", f.one.p50_us)
    });
    row("latency p99, 1 connection", &|f| {
        format!("{:.1} µs", f.one.p99_us)
    });
    row("req/s, 1 connection", &|f| format!("{:.0}", f.one.rps));
    row("latency p50, 16 connections", &|f| {
        format!("{:.1} µs", f.sixteen.p50_us)
    });
    row("latency p99, 16 connections", &|f| {
        format!("{:.1} µs", f.sixteen.p99_us)
    });
    row("req/s, 16 connections", &|f| {
        format!("{:.0}", f.sixteen.rps)
    });
    row("bulk, one stream (1 GiB)", &|f| {
        f.bulk_mib_s.map_or("–".into(), |b| format!("{b:.0} MiB/s"))
    });
    row("new connections/s (16 at a time)", &|f| {
        format!("{:.0}", f.connect.rps)
    });
    row("wrk errors (all runs)", &|f| {
        (f.one.errors + f.sixteen.errors + f.connect.errors).to_string()
    });
    let mib = |v: &[Rss], anon: bool| match v {
        [] => "–".to_string(),
        _ => v
            .iter()
            .map(|m| format!("{:.1}", if anon { m.anon } else { m.total }))
            .collect::<Vec<_>>()
            .join(" / "),
    };
    row("VmRSS idle, client / server proxy (MiB)", &|f| {
        mib(&f.rss_idle, false)
    });
    row("RssAnon idle (MiB)", &|f| mib(&f.rss_idle, true));
    row("VmRSS with 1,000 connections (MiB)", &|f| {
        mib(&f.rss_held, false)
    });
    row("RssAnon with 1,000 connections (MiB)", &|f| {
        mib(&f.rss_held, true)
    });

    let (direct, reference) = (&figures[DIRECT], &figures[REFERENCE]);
    let (haproxy, palisade) = (&figures[HAPROXY], &figures[PALISADE]);
    let added = |f: &Figures| f.one.p50_us - direct.one.p50_us;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "\nadded p50 per pair, 1 connection: haproxy without TLS {:.1} µs, haproxy {:.1} µs, Palisade {:.1} µs",
        added(reference),
        added(haproxy),
        added(palisade)
    );
    println!(
        "target added p50 < 100 µs: {}; no worse than haproxy's: {}",
        verdict(added(palisade) < 100.0),
        verdict(added(palisade) <= added(haproxy))
    );
    println!(
        "target req/s at 16 connections >= haproxy's ({:.0} vs {:.0}): {}",
        palisade.sixteen.rps,
        haproxy.sixteen.rps,
        verdict(palisade.sixteen.rps >= haproxy.sixteen.rps)
    );
    let idle_max = palisade
        .rss_idle
        .iter()
        .map(|r| r.total)
        .fold(0.0, f64::max);
    let anon_max = palisade.rss_idle.iter().map(|r| r.anon).fold(0.0, f64::max);
    println!(
        "target idle RSS < 10 MiB: VmRSS {idle_max:.1} MiB: {} (its own anonymous memory: {anon_max:.1} MiB)",
        verdict(idle_max < 10.0)
    );
}
