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
pub mod mesh;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use mesh::{Mesh, PROXY_UID};

/// Namespace prefix of everything the demo creates.
const PREFIX: &str = "palisade-demo";
const NAMESPACE: &str = "demo";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 11);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 12);
const LEGACY_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 13);
/// The `web` Service's cluster IP: no interface holds it; only the client's proxy knows it.
const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 50, 10);
const APP_PORT: u16 = 8080;

/// Runs the demo; everything it created is gone when this returns (or on Ctrl-C / SIGTERM).
pub fn run() -> anyhow::Result<()> {
    if let Some(why) = lab::missing_prerequisite() {
        bail!("palisade demo cannot run here: {why}");
    }
    let started = Instant::now();
    let dir = std::env::temp_dir().join(PREFIX);
    let _ = std::fs::remove_dir_all(&dir);
    let cleanup = lab::Cleanup::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let outcome = runtime.block_on(async {
        let scenario = {
            let (dir, cleanup) = (dir.clone(), cleanup.clone());
            tokio::task::spawn_blocking(move || scenario(&dir, cleanup))
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
    // The scenario's own Mesh removes everything when it returns; after a signal it may still
    // be running, so clean up from here too (idempotent).
    cleanup.run();
    let _ = std::fs::remove_dir_all(&dir);
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

/// The story, step by step. Errors carry the relevant log tails.
fn scenario(dir: &Path, cleanup: lab::Cleanup) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the palisade binary")?;
    say(
        "Starting the control plane (standalone: CA, policy distribution) in its own network namespace, listening on 10.250.0.1:15012.",
    );
    let mesh = Mesh::start(PREFIX, dir, &exe, &[], &manifests("STRICT"), cleanup)?;
    detail("ready: the policies in the config directory are loaded (namespace demo is STRICT).");

    say(
        "Three pods on a bridge: client (10.250.0.11) and server (10.250.0.12) are meshed; legacy (10.250.0.13) has no proxy.",
    );
    let client = mesh.add_meshed_pod("client", CLIENT_IP, NAMESPACE, "client", &[])?;
    let server = mesh.add_meshed_pod("server", SERVER_IP, NAMESPACE, "web", &[])?;
    let legacy = mesh.add_pod("legacy", LEGACY_IP)?;
    for (name, sa) in [("client", "client"), ("server", "web")] {
        detail(&format!(
            "{name}: `palisade init` redirected its traffic; `palisade proxy` runs as uid {PROXY_UID} with the identity of service account {sa}."
        ));
    }
    let listener = server.enter(|| {
        std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, APP_PORT)))
    })??;
    app::serve(listener, "hello from web (namespace demo)\n".into());
    detail("server app: a plain HTTP server on :8080; it knows nothing of TLS.");
    for pod in [&client, &server] {
        mesh.wait_healthy(pod, Duration::from_secs(60))?;
    }
    detail("both proxies hold a certificate from the CA and their first policy.");

    let vip = SocketAddr::from((SERVICE_VIP, 80));
    say(&format!(
        "client → http://{vip}/ (the web Service's cluster IP)"
    ));
    match client.enter(move || app::call(vip))? {
        app::Reply::Ok(body) => detail(&format!("answer: {}", body.trim())),
        app::Reply::Refused(why) => bail!(
            "the meshed call failed: {why}\n--- client proxy ---\n{}\n--- server proxy ---\n{}",
            mesh.lab.log_tail("proxy-client", 2000),
            mesh.lab.log_tail("proxy-server", 2000)
        ),
    }
    let (client_id, _) = mesh::certificate(&client)?;
    let (server_id, _) = mesh::certificate(&server)?;
    detail(&format!("the client's proxy presented {client_id}"));
    detail(&format!("the server's proxy presented {server_id}"));
    let mutual = mesh::counter(
        &server,
        "palisade_proxy_connections_total",
        &[("direction", "inbound"), ("tls", "mesh")],
    )?;
    detail(&format!(
        "the server's proxy counted {mutual} inbound mutual-TLS connection(s); each app spoke plaintext only to its own proxy."
    ));

    let direct = SocketAddr::from((SERVER_IP, APP_PORT));
    say(&format!(
        "legacy → http://{direct}/ (no proxy, so plaintext)"
    ));
    match legacy.enter(move || app::call(direct))? {
        app::Reply::Refused(why) => detail(&format!(
            "refused, as STRICT demands: the server's proxy accepts only mutual TLS ({why})."
        )),
        app::Reply::Ok(_) => bail!("the legacy call succeeded under STRICT"),
    }

    say("Switching namespace demo to PERMISSIVE (editing the PeerAuthentication file).");
    let edited = Instant::now();
    for (file, yaml) in manifests("PERMISSIVE") {
        mesh.write(file, &yaml)?;
    }
    let deadline = edited + Duration::from_secs(20);
    loop {
        if let app::Reply::Ok(body) = legacy.enter(move || app::call(direct))? {
            detail(&format!(
                "legacy → server answers {:.1} s after the edit: {}",
                edited.elapsed().as_secs_f64(),
                body.trim()
            ));
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the legacy call was still refused 20 s after PERMISSIVE\n--- server proxy ---\n{}",
                mesh.lab.log_tail("proxy-server", 2000)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    match client.enter(move || app::call(vip))? {
        app::Reply::Ok(_) => detail("and the meshed client still gets mutual TLS."),
        app::Reply::Refused(why) => bail!("the meshed call failed under PERMISSIVE: {why}"),
    }
    Ok(())
}

/// The config directory: the namespace, the three pods, the web Service, and the namespace's
/// PeerAuthentication in `mode` — what a user would `kubectl apply`.
fn manifests(mode: &str) -> Vec<(&'static str, String)> {
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
    let policy = format!(
        "apiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: {NAMESPACE}\nspec:\n  mtls:\n    mode: {mode}\n"
    );
    vec![
        ("workloads.yaml", workloads.join("---\n")),
        ("peer-authentication.yaml", policy),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifests_are_what_policy_explain_reads() {
        let dir = tempfile::tempdir().unwrap();
        for (file, yaml) in manifests("STRICT") {
            std::fs::write(dir.path().join(file), yaml).unwrap();
        }
        let set = crate::api::manifest::Manifests::load(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(set.peer_authentications.len(), 1);
        assert_eq!(set.services.len(), 1);
        assert_eq!(set.pods.len(), 3);
        let ips: Vec<_> = set.pods.iter().flat_map(|p| p.ips.clone()).collect();
        assert_eq!(
            ips,
            [CLIENT_IP, SERVER_IP, LEGACY_IP].map(std::net::IpAddr::from)
        );
    }
}
