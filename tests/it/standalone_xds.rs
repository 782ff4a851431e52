//! The standalone control plane end to end: policies as files in the config directory, proxies
//! on ADS over TLS with their own workload certificates. An edit reaches the proxy it affects,
//! a proxy whose view did not change gets nothing, a malformed file keeps the last good state,
//! and a proxy naming a pod it is not is refused.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use palisade::ca::Identity;
use palisade::server::Running;
use palisade::xds::proto::palisade_v1::{InboundPolicy, MtlsMode};
use palisade::xds::views::{DESTINATION_TYPE, INBOUND_POLICY_TYPE, WORKLOAD_TYPE};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::support;
use crate::xds_harness::{self as h, XdsStream};

/// How long a test waits for something that should happen (generous: CI runs tests in
/// parallel on two cores). The latency of an edit is printed, not asserted.
const DEADLINE: Duration = Duration::from_secs(20);

const INVENTORY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: bank}
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
kind: Pod
metadata:
  name: api-1
  namespace: bank
  labels: {app: api, security.palisade.dev/tlsMode: palisade}
spec:
  serviceAccountName: api
  containers:
  - name: api
    image: api
    ports: [{containerPort: 9090}]
status: {podIP: 10.44.0.12}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{port: 80, targetPort: http, name: http}]
"#;

fn peer_authentication(namespace: &str, app: &str, mode: &str) -> String {
    format!(
        "apiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\n\
         metadata: {{name: {app}, namespace: {namespace}}}\n\
         spec:\n  selector: {{matchLabels: {{app: {app}}}}}\n  mtls: {{mode: {mode}}}\n"
    )
}

/// Writes `text` to `path` through a rename, as editors and `kubectl`-style tools do.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// Polls `/metrics` until a line starts with `prefix` and ends with ` value`.
async fn wait_metric(running: &Running, prefix: &str, value: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = http_get(running.monitor_addr, "/metrics").await;
        if text
            .lines()
            .any(|l| l.starts_with(prefix) && l.ends_with(&format!(" {value}")))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{prefix} {value} not reached:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TLS channel to the control plane presenting a fresh workload certificate of `ns/sa`.
async fn channel(running: &Running, ns: &str, sa: &str) -> Channel {
    let (key, csr) = h::key_and_csr();
    let issued = running
        .authority
        .issue(&Identity::new(ns, sa).unwrap(), &csr, 0, "test")
        .unwrap();
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            running.authority.trust_bundle().to_pem(),
        ))
        .domain_name("localhost")
        .identity(tonic::transport::Identity::from_pem(
            issued.chain_pem.concat(),
            key.serialize_pem(),
        ));
    Channel::from_shared(format!("https://{}", running.grpc_addr))
        .unwrap()
        .tls_config(config)
        .unwrap()
        .connect()
        .await
        .expect("TLS connection")
}

/// Opens pod `ns/pod`'s ADS stream for `types`, ACKs the first response of each.
async fn subscribe(running: &Running, ns: &str, pod: &str, sa: &str, types: &[&str]) -> XdsStream {
    let channel = channel(running, ns, sa).await;
    let mut stream = h::open_ads(channel, h::request(types[0], Some(h::node(ns, pod))))
        .await
        .expect("admitted");
    for type_url in &types[1..] {
        stream.send(h::request(type_url, None)).await;
    }
    for _ in types {
        let response = stream.next().await.expect("a response per type");
        stream.send(h::ack(&response, None)).await;
    }
    stream
}

/// The next response, which must be an InboundPolicy; returns its default mode (ACKed).
async fn next_mode(stream: &mut XdsStream) -> (MtlsMode, DiscoveryResponse) {
    let response = stream.next().await.expect("a push");
    assert_eq!(response.type_url, INBOUND_POLICY_TYPE, "{response:?}");
    let policy = InboundPolicy::decode(response.resources[0].value.as_slice()).unwrap();
    stream.send(h::ack(&response, None)).await;
    (policy.default_mode(), response)
}

#[tokio::test]
async fn policy_files_reach_the_proxies_they_affect() {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("inventory.yaml"), INVENTORY).unwrap();
    let web_policy = config_dir.join("web-policy.yaml");
    let bank_policy = config_dir.join("bank-policy.yaml");
    write(&web_policy, &peer_authentication("shop", "web", "STRICT"));
    let running = palisade::server::start(support::standalone_config(dir.path()))
        .await
        .unwrap();
    // Ready once the directory has been read.
    let deadline = Instant::now() + DEADLINE;
    while !http_get(running.monitor_addr, "/readyz")
        .await
        .starts_with("HTTP/1.1 200")
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut web = subscribe(&running, "shop", "web-1", "web", &[INBOUND_POLICY_TYPE]).await;
    // bank/api-1 sees the Service web and the pod web-1: a STRICT <-> PERMISSIVE change of web
    // does not change how a client reaches it.
    let mut api = subscribe(
        &running,
        "bank",
        "api-1",
        "api",
        &[INBOUND_POLICY_TYPE, WORKLOAD_TYPE, DESTINATION_TYPE],
    )
    .await;

    // An edit reaches the proxy it affects.
    let edited = Instant::now();
    write(
        &web_policy,
        &peer_authentication("shop", "web", "PERMISSIVE"),
    );
    assert_eq!(next_mode(&mut web).await.0, MtlsMode::Permissive);
    eprintln!("edit -> push: {:?}", edited.elapsed());

    // api-1 got nothing: the next thing on its stream is the push of a change that affects
    // it (a push of the first change would have come before it on the same stream).
    write(&bank_policy, &peer_authentication("bank", "api", "STRICT"));
    assert_eq!(next_mode(&mut api).await.0, MtlsMode::Strict);

    // A malformed file keeps the last good state: web stays STRICT (had the policy been
    // dropped, web-1 would have been pushed the PERMISSIVE default).
    write(&web_policy, &peer_authentication("shop", "web", "STRICT"));
    assert_eq!(next_mode(&mut web).await.0, MtlsMode::Strict);
    write(
        &web_policy,
        "apiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\nmetadata: {name: web, namespace: shop}\nspec: {mtls: {mode: SOMETIMES}}\n",
    );
    wait_metric(&running, "palisade_controller_config_errors_total", "1").await;
    write(&web_policy, &peer_authentication("shop", "web", "DISABLE"));
    assert_eq!(
        next_mode(&mut web).await.0,
        MtlsMode::Disable,
        "nothing between the last good state and the fix"
    );
    // DISABLE does change how clients reach web-1: api-1's Workload and Destination views
    // follow.
    let mut changed = Vec::new();
    for _ in 0..2 {
        let response = api.next().await.expect("a push");
        api.send(h::ack(&response, None)).await;
        changed.push(response.type_url);
    }
    changed.sort();
    assert_eq!(changed, vec![DESTINATION_TYPE, WORKLOAD_TYPE]);

    // A proxy naming a pod it is not is refused.
    let status = h::refused_ads(
        channel(&running, "shop", "web").await,
        h::request(INBOUND_POLICY_TYPE, Some(h::node("bank", "api-1"))),
    )
    .await;
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = h::refused_ads(
        channel(&running, "shop", "web").await,
        h::request(INBOUND_POLICY_TYPE, Some(h::node("shop", "no-such-pod"))),
    )
    .await;
    assert_eq!(status.code(), Code::PermissionDenied);

    drop((web, api));
    running.shutdown().await.unwrap();
}
