//! `palisade demo`: a complete mesh on one Linux machine, no Kubernetes. The standalone control
//! plane in a "hub" network namespace; three "pods" (network namespaces on a bridge): a meshed
//! client and a meshed server (each with `palisade init` and `palisade proxy` as uid 1337,
//! started as the injector would start them), and a legacy pod without a proxy. Policies are
//! files in the control plane's config directory, as a user would `kubectl apply` them.
//!
//! The story: under STRICT the meshed call succeeds over mutual TLS (both SPIFFE IDs shown) and
//! the legacy call is refused; a switch to PERMISSIVE lets the legacy call in. Then everything
//! the demo created is removed (also on Ctrl-C and on failure).

pub mod app;
pub mod lab;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use lab::{Lab, Pod};

/// Namespace prefix of everything the demo creates.
const PREFIX: &str = "palisade-demo";
const NAMESPACE: &str = "demo";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 11);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 12);
const LEGACY_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 13);
/// The `web` Service's cluster IP: no interface holds it; only the client's proxy knows it.
const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 50, 10);
const APP_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 15020;
const MONITOR_PORT: u16 = 15014;
/// The proxy's user: `palisade init` leaves its own traffic alone.
const PROXY_UID: &str = "1337";

/// Runs the demo; everything it created is gone when this returns (or on Ctrl-C / SIGTERM).
pub fn run() -> anyhow::Result<()> {
    if let Some(why) = lab::missing_prerequisite() {
        bail!("palisade demo cannot run here: {why}");
    }
    let started = Instant::now();
    let dir = std::env::temp_dir().join(PREFIX);
    let _ = std::fs::remove_dir_all(&dir);
    let lab = Arc::new(Lab::new(PREFIX, &dir)?);
    let cleanup = lab.cleanup();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let outcome = runtime.block_on(async {
        let scenario = {
            let lab = lab.clone();
            tokio::task::spawn_blocking(move || scenario(&lab))
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("SIGTERM handler")?;
        tokio::select! {
            done = scenario => done.context("the demo panicked")?,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated")),
        }
    });
    say(
        "Cleaning up: stopping the processes, deleting the namespaces (and their iptables rules and links), removing the files.",
    );
    cleanup.run();
    if outcome.is_ok() {
        say(&format!(
            "Done in {:.0} s; nothing is left behind.",
            started.elapsed().as_secs_f64()
        ));
    }
    outcome
}

fn say(text: &str) {
    println!("\n▸ {text}");
}

fn detail(text: &str) {
    println!("    {text}");
}

/// The story, step by step. Errors carry the relevant log tail.
fn scenario(lab: &Lab) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the palisade binary")?;
    let state = lab.dir().join("state");
    let config = lab.dir().join("config");
    let secrets = lab.dir().join("secrets");
    for d in [&state, &config, &secrets] {
        std::fs::create_dir_all(d)?;
    }
    write_manifests(&config, "STRICT")?;

    say(
        "Starting the control plane (standalone: CA, policy distribution) in its own network namespace, listening on 10.250.0.1:15012.",
    );
    let mut controller = Command::new("ip");
    controller
        .args(["netns", "exec", &lab.hub().netns])
        .arg(&exe)
        .args(["controller", "--standalone", "--state-dir"])
        .arg(&state)
        .arg("--config-dir")
        .arg(&config)
        .args(["--grpc-addr", &format!("{}:15012", lab::HUB_IP)])
        .args(["--webhook-addr", "127.0.0.1:15017"])
        .args(["--monitor-addr", &format!("127.0.0.1:{MONITOR_PORT}")]);
    lab.spawn("controller", controller)?;
    wait_until(lab, "controller", Duration::from_secs(60), || {
        let hub = lab.hub().clone();
        hub.enter(|| app::admin_get(MONITOR_PORT, "/readyz"))
            .ok()
            .and_then(Result::ok)
            .is_some_and(|(status, _)| status == 200)
    })?;
    detail("ready: the policies in the config directory are loaded (namespace demo is STRICT).");

    // The trust bundle and tokens, readable by the proxies' uid as the projected volumes are.
    let root = secrets.join("root-cert.pem");
    std::fs::copy(state.join("root-cert.pem"), &root).context("copying root-cert.pem")?;
    let client = lab.add_pod("client", CLIENT_IP)?;
    let server = lab.add_pod("server", SERVER_IP)?;
    let legacy = lab.add_pod("legacy", LEGACY_IP)?;
    say(
        "Three pods on a bridge: client (10.250.0.11) and server (10.250.0.12) are meshed; legacy (10.250.0.13) has no proxy.",
    );
    for (pod, sa) in [(&client, "client"), (&server, "web")] {
        let token = secrets.join(format!("{sa}.token"));
        let out = Command::new(&exe)
            .args(["token", "--state-dir"])
            .arg(&state)
            .args(["--namespace", NAMESPACE, "--service-account", sa])
            .output()
            .context("palisade token")?;
        if !out.status.success() {
            bail!("palisade token: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(&token, &out.stdout)?;
        start_mesh_pod(lab, &exe, pod, sa, &token, &root)?;
    }
    let server_listener = server.enter(|| {
        std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, APP_PORT)))
    })??;
    app::serve(server_listener, "hello from web (namespace demo)\n".into());
    detail("server app: a plain HTTP server on :8080; it knows nothing of TLS.");
    for (pod, name) in [(&client, "proxy-client"), (&server, "proxy-server")] {
        wait_until(lab, name, Duration::from_secs(60), || {
            admin(pod, "/healthz").is_ok_and(|(status, _)| status == 200)
        })?;
    }
    detail("both proxies hold a certificate from the CA and their first policy.");

    let vip = SocketAddr::from((SERVICE_VIP, 80));
    say(&format!(
        "client → http://{vip}/ (the web Service's cluster IP)"
    ));
    match in_pod(&client, move || app::call(vip))? {
        app::Reply::Ok(body) => detail(&format!("answer: {}", body.trim())),
        app::Reply::Refused(why) => bail!(
            "the meshed call failed: {why}\n--- client proxy ---\n{}\n--- server proxy ---\n{}",
            lab.log_tail("proxy-client", 2000),
            lab.log_tail("proxy-server", 2000)
        ),
    }
    let client_id = spiffe_id(&client)?;
    let server_id = spiffe_id(&server)?;
    detail(&format!("the client's proxy presented {client_id}"));
    detail(&format!("the server's proxy presented {server_id}"));
    detail(&format!(
        "the server's proxy counted {} inbound mutual-TLS connection(s); the apps spoke plaintext to their own proxies only.",
        inbound_mesh_connections(&server)?
    ));

    let direct = SocketAddr::from((SERVER_IP, APP_PORT));
    say(&format!(
        "legacy → http://{direct}/ (no proxy, so plaintext)"
    ));
    match in_pod(&legacy, move || app::call(direct))? {
        app::Reply::Refused(why) => detail(&format!(
            "refused, as STRICT demands: the server's proxy accepts only mutual TLS ({why})."
        )),
        app::Reply::Ok(_) => bail!("the legacy call succeeded under STRICT"),
    }

    say("Switching namespace demo to PERMISSIVE (editing the PeerAuthentication file).");
    let edited = Instant::now();
    write_manifests(&config, "PERMISSIVE")?;
    let deadline = edited + Duration::from_secs(20);
    loop {
        if let app::Reply::Ok(body) = in_pod(&legacy, move || app::call(direct))? {
            detail(&format!(
                "legacy → server now answers after {:.1} s: {}",
                edited.elapsed().as_secs_f64(),
                body.trim()
            ));
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the legacy call was still refused 20 s after PERMISSIVE\n--- server proxy ---\n{}",
                lab.log_tail("proxy-server", 2000)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    match in_pod(&client, move || app::call(vip))? {
        app::Reply::Ok(_) => detail("and the meshed client still gets mutual TLS."),
        app::Reply::Refused(why) => bail!("the meshed call failed under PERMISSIVE: {why}"),
    }
    Ok(())
}

/// `palisade init` in the pod, then `palisade proxy` as uid 1337 with the environment the
/// injector writes.
fn start_mesh_pod(
    lab: &Lab,
    exe: &Path,
    pod: &Pod,
    service_account: &str,
    token: &Path,
    root: &Path,
) -> anyhow::Result<()> {
    let out = pod
        .command(exe)
        .arg("init")
        .output()
        .context("palisade init")?;
    if !out.status.success() {
        bail!(
            "palisade init in {}: {}",
            pod.netns,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let name = pod.netns.trim_start_matches(&format!("{PREFIX}-")[..]);
    let mut proxy = pod.command("setpriv");
    proxy
        .args(["--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups"])
        .args(["--inh-caps=-all", "--bounding-set=-all"])
        .arg(exe)
        .arg("proxy")
        .arg("--token-file")
        .arg(token)
        .arg("--ca-root")
        .arg(root)
        .env("POD_NAME", name)
        .env("POD_NAMESPACE", NAMESPACE)
        .env("INSTANCE_IP", pod.ip.to_string())
        .env("SERVICE_ACCOUNT", service_account)
        .env("PALISADE_CA_ADDRESS", format!("{}:15012", lab::HUB_IP))
        .env("PALISADE_TRUST_DOMAIN", "cluster.local");
    lab.spawn(&format!("proxy-{name}"), proxy)?;
    detail(&format!(
        "{name}: `palisade init` redirected its traffic; `palisade proxy` runs as uid {PROXY_UID} (identity: service account {service_account})."
    ));
    Ok(())
}

/// Runs `f` in `pod`'s network namespace.
fn in_pod<T: Send + 'static>(
    pod: &Pod,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    pod.enter(f)
}

/// GET on the pod's proxy admin port.
fn admin(pod: &Pod, path: &'static str) -> anyhow::Result<(u16, String)> {
    pod.enter(move || app::admin_get(ADMIN_PORT, path))?
}

/// The SPIFFE ID the pod's proxy serves with (its `/certs`).
fn spiffe_id(pod: &Pod) -> anyhow::Result<String> {
    let (_, body) = admin(pod, "/certs")?;
    let certs: serde_json::Value = serde_json::from_str(&body).context("/certs is not JSON")?;
    certs["spiffe_id"]
        .as_str()
        .map(str::to_string)
        .context("/certs has no spiffe_id")
}

/// `palisade_proxy_connections_total{direction="inbound",tls="mesh"}` of the pod's proxy.
fn inbound_mesh_connections(pod: &Pod) -> anyhow::Result<u64> {
    let (_, metrics) = admin(pod, "/metrics")?;
    Ok(metrics
        .lines()
        .filter(|l| {
            l.starts_with("palisade_proxy_connections_total{")
                && l.contains("direction=\"inbound\"")
                && l.contains("tls=\"mesh\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// Polls `ready` every 200 ms until it holds; fails with `name`'s log tail after `timeout` or
/// as soon as `name` exits.
fn wait_until(
    lab: &Lab,
    name: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = lab.exited(name) {
            bail!("{name} exited ({status}):\n{}", lab.log_tail(name, 3000));
        }
        if Instant::now() > deadline {
            bail!(
                "{name} was not ready after {} s:\n{}",
                timeout.as_secs(),
                lab.log_tail(name, 3000)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The config directory: the namespace, the three pods, the web Service, and the namespace's
/// PeerAuthentication in `mode` — what a user would `kubectl apply`.
fn write_manifests(config: &Path, mode: &str) -> anyhow::Result<()> {
    let pod = |name: &str, sa: &str, ip: Ipv4Addr, meshed: bool, app: &str| {
        let mesh_label = if meshed {
            "\n    security.palisade.dev/tlsMode: palisade"
        } else {
            ""
        };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n  labels:\n    app: {app}{mesh_label}\nspec:\n  serviceAccountName: {sa}\n  containers:\n  - name: app\n    image: demo\n    ports:\n    - containerPort: {APP_PORT}\n      name: http\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n"
        )
    };
    let workloads = [
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"),
        pod("client", "client", CLIENT_IP, true, "client"),
        pod("server", "web", SERVER_IP, true, "web"),
        pod("legacy", "legacy", LEGACY_IP, false, "legacy"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {NAMESPACE}\nspec:\n  clusterIP: {SERVICE_VIP}\n  selector:\n    app: web\n  ports:\n  - name: http\n    port: 80\n    targetPort: http\n"
        ),
    ];
    write_atomically(&config.join("workloads.yaml"), &workloads.join("---\n"))?;
    let policy = format!(
        "apiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: {NAMESPACE}\nspec:\n  mtls:\n    mode: {mode}\n"
    );
    write_atomically(&config.join("peer-authentication.yaml"), &policy)
}

/// Writes via a temporary file and a rename, so the control plane never reads half a file.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifests_are_what_policy_explain_reads() {
        let dir = tempfile::tempdir().unwrap();
        write_manifests(dir.path(), "STRICT").unwrap();
        let set = crate::api::manifest::Manifests::load(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(set.peer_authentications.len(), 1);
        assert_eq!(set.services.len(), 1);
        assert_eq!(set.pods.len(), 3);
        let ips: Vec<_> = set.pods.iter().flat_map(|p| p.ips.clone()).collect();
        assert_eq!(
            ips,
            [CLIENT_IP, SERVER_IP, LEGACY_IP].map(std::net::IpAddr::from)
        );
        assert!(!dir.path().join("workloads.tmp").exists());
    }
}
