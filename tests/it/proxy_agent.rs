//! The proxy's agent against the real standalone control plane on loopback: a workload
//! certificate from the real CA with a real token, the ADS stream over TLS with that
//! certificate, the first policy, a policy file edit arriving as a new policy, and a control
//! plane restart the proxy rides out (last policy kept, then reconnected).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use palisade::auth::Identity;
use palisade::auth::jwt::LocalJwtKey;
use palisade::proxy::state::Policy;
use palisade::proxy::{self, app_health::AppProbes};
use palisade::xds::proto::palisade_v1::MtlsMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::support;

const DEADLINE: Duration = Duration::from_secs(30);

const INVENTORY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels: {app: web, security.palisade.dev/tlsMode: palisade}
spec:
  serviceAccountName: web
  containers:
  - name: web
    image: web
    ports: [{containerPort: 8080, name: http}]
status: {podIP: 10.44.0.11}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{port: 80, targetPort: http, name: http}]
"#;

fn peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\n\
         metadata: {{name: web, namespace: shop}}\n\
         spec:\n  selector: {{matchLabels: {{app: web}}}}\n  mtls: {{mode: {mode}}}\n"
    )
}

/// Writes through a rename, as editors do.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], addr.port()));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// Waits (with the deadline) until the published policy satisfies `check`.
async fn wait_policy(
    rx: &watch::Receiver<Option<Arc<Policy>>>,
    what: &str,
    check: impl Fn(&Policy) -> bool,
) -> Arc<Policy> {
    let mut rx = rx.clone();
    let found = tokio::time::timeout(DEADLINE, rx.wait_for(|p| p.as_deref().is_some_and(&check)))
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
        .expect("the agent is running");
    found.clone().unwrap()
}

fn token(state_dir: &Path, ns: &str, sa: &str) -> String {
    LocalJwtKey::load_or_create(state_dir)
        .unwrap()
        .issue(
            &Identity::new(ns, sa).unwrap(),
            "palisade-ca",
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .unwrap()
}

fn proxy_config(dir: &Path, grpc: SocketAddr, service_account: &str) -> proxy::Config {
    proxy::Config {
        pod_name: "web-1".into(),
        pod_namespace: "shop".into(),
        instance_ip: Some("10.44.0.11".parse().unwrap()),
        service_account: service_account.into(),
        trust_domain: "cluster.local".into(),
        ca_address: grpc.to_string(),
        ca_server_name: "localhost".into(),
        xds_address: grpc.to_string(),
        xds_server_name: "127.0.0.1".into(),
        token_file: dir.join("token"),
        ca_root: dir.join("root-cert.pem"),
        inbound_port: 15006,
        outbound_port: 15001,
        admin_port: 0,
        drain_timeout: Duration::from_secs(1),
        certificate_ttl: None,
        app_probes: AppProbes::default(),
    }
}

async fn wait_ready(monitor: SocketAddr) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let ready = match tokio::net::TcpStream::connect(monitor).await {
            Ok(_) => http_get(monitor, "/readyz")
                .await
                .starts_with("HTTP/1.1 200"),
            Err(_) => false,
        };
        if ready {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port (bound, then released for the controller to take).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `palisade controller --standalone` process, killed (SIGKILL, as a crashed or evicted
/// control plane goes) when dropped.
struct Controller(std::process::Child);

impl Controller {
    fn spawn(dir: &Path, grpc: SocketAddr, monitor: SocketAddr) -> Self {
        let child = std::process::Command::new(support::palisade_bin())
            .arg("controller")
            .arg("--standalone")
            .arg("--state-dir")
            .arg(dir)
            .arg("--config-dir")
            .arg(dir.join("config"))
            .arg(format!("--grpc-addr={grpc}"))
            .arg(format!("--monitor-addr={monitor}"))
            .arg(format!("--webhook-addr={}", free_port()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("palisade controller starts");
        Self(child)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_agent_gets_identity_and_policy_and_follows_edits_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("inventory.yaml"), INVENTORY).unwrap();
    let policy_file = config_dir.join("web-policy.yaml");
    write(&policy_file, &peer_authentication("STRICT"));
    // The token-signing key is made here; the controller finds it in its state directory.
    std::fs::write(dir.path().join("token"), token(dir.path(), "shop", "web")).unwrap();
    let (grpc, monitor) = (free_port(), free_port());
    let control = Controller::spawn(dir.path(), grpc, monitor);
    wait_ready(monitor).await;

    let agent = proxy::start(proxy_config(dir.path(), grpc, "web"))
        .await
        .unwrap();
    let first = wait_policy(&agent.shared.policy, "first policy", |p| {
        p.inbound_mode(8080) == MtlsMode::Strict
    })
    .await;
    assert_eq!(first.versions.len(), 5, "{:?}", first.versions);
    assert!(
        first
            .destinations
            .iter()
            .any(|d| d.fqdn == "web.shop.svc.cluster.local"),
        "{:?}",
        first.destinations
    );
    let identity = agent
        .shared
        .identity
        .borrow()
        .clone()
        .expect("identity before policy");
    assert_eq!(identity.spiffe_id, "spiffe://cluster.local/ns/shop/sa/web");
    assert!(identity.chain_pem.len() >= 2, "leaf and root");
    assert!(
        http_get(agent.admin_addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let certs = http_get(agent.admin_addr, "/certs").await;
    assert!(
        certs.contains("spiffe://cluster.local/ns/shop/sa/web"),
        "{certs}"
    );
    assert!(!certs.contains("PRIVATE KEY"));
    let config = http_get(agent.admin_addr, "/config").await;
    assert!(config.contains("\"default_mode\":\"STRICT\""), "{config}");
    let metrics = http_get(agent.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("palisade_proxy_certificate_renewals_total 1"),
        "{metrics}"
    );

    // A file edit arrives as a new policy.
    write(&policy_file, &peer_authentication("PERMISSIVE"));
    wait_policy(&agent.shared.policy, "edit to PERMISSIVE", |p| {
        p.inbound_mode(8080) == MtlsMode::Permissive
    })
    .await;

    // The control plane dies: the last policy stays in force.
    drop(control);
    assert_eq!(
        agent
            .shared
            .policy
            .borrow()
            .as_deref()
            .map(|p| p.inbound_mode(8080)),
        Some(MtlsMode::Permissive)
    );
    // It comes back on the same address (same state directory, so the same CA) with another
    // policy: the proxy reconnects and receives it.
    write(&policy_file, &peer_authentication("DISABLE"));
    let _control = Controller::spawn(dir.path(), grpc, monitor);
    wait_ready(monitor).await;
    wait_policy(&agent.shared.policy, "policy after restart", |p| {
        p.inbound_mode(8080) == MtlsMode::Disable
    })
    .await;
    assert!(
        http_get(agent.admin_addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(agent.drain(Duration::from_secs(1)).await);
}

#[tokio::test]
async fn a_certificate_for_another_identity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/inventory.yaml"), INVENTORY).unwrap();
    let control = palisade::server::start(support::standalone_config(dir.path()))
        .await
        .unwrap();
    // The token is for shop/other; the proxy runs as shop/web: the CA certifies the token's
    // identity, and the agent refuses to use it.
    std::fs::write(dir.path().join("token"), token(dir.path(), "shop", "other")).unwrap();
    let agent = proxy::start(proxy_config(dir.path(), control.grpc_addr, "web"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while agent.metrics.renewal_failures.get() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no failed attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(agent.shared.identity.borrow().is_none());
    assert_eq!(agent.metrics.renewals.get(), 0);
    let health = http_get(agent.admin_addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(
        health.ends_with("no workload certificate yet\n"),
        "{health}"
    );
    agent.drain(Duration::from_secs(1)).await;
    control.shutdown().await.unwrap();
}
