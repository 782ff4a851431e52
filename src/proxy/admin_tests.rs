use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt as _;
use tokio::sync::watch;
use tower::ServiceExt as _;

use super::*;
use crate::proxy::identity::tests::identity;
use crate::proxy::trust::{self, tests::root_pem};

const ID: &str = "spiffe://cluster.local/ns/shop/sa/web";

#[test]
fn healthz_needs_an_unexpired_certificate_and_a_policy() {
    let id = identity(ID, Duration::from_secs(3600));
    let now = SystemTime::now();
    let later = id.not_after + Duration::from_secs(1);
    for (identity, policy, at, expected) in [
        (None, false, now, Err("no workload certificate yet")),
        (None, true, now, Err("no workload certificate yet")),
        (
            Some(&id),
            false,
            now,
            Err("no policy from the control plane yet"),
        ),
        (Some(&id), true, now, Ok(())),
        (
            Some(&id),
            true,
            later,
            Err("the workload certificate has expired"),
        ),
    ] {
        assert_eq!(health(identity, policy, at), expected);
    }
}

#[test]
fn certs_shows_the_chain_and_roots_but_never_a_key() {
    let id = identity(ID, Duration::from_secs(3600));
    let root = root_pem();
    let trust = trust::parse(&root).unwrap();
    let doc = certs_json(Some(&id), &trust);
    let cert = &doc["certificate"];
    assert_eq!(cert["spiffe_id"], ID);
    assert_eq!(cert["serial"], "0abc");
    assert_eq!(cert["chain"][0], id.chain_pem[0]);
    assert_eq!(cert["not_after"], rfc3339(id.not_after));
    assert!(
        cert["not_before"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok(),
        "{cert}"
    );
    assert_eq!(doc["roots"][0], trust.roots_pem[0]);
    let text = doc.to_string();
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    assert_eq!(certs_json(None, &trust)["certificate"], Value::Null);
}

#[test]
fn rfc3339_is_utc_seconds() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_183_700);
    assert_eq!(rfc3339(t), "2026-12-02T03:55:00Z");
}

fn policy() -> Policy {
    let inbound = pb::InboundPolicy {
        default_mode: pb::MtlsMode::Strict as i32,
        port_modes: [(8080, pb::MtlsMode::Disable as i32)].into(),
        decided_by: vec!["PeerAuthentication shop/web (workload)".into()],
        spiffe_id: ID.into(),
    };
    let destination = pb::Destination {
        fqdn: "api.bank.svc.cluster.local".into(),
        namespace: "bank".into(),
        name: "api".into(),
        vips: vec!["10.96.0.20".into()],
        ports: vec![pb::ServicePort {
            port: 80,
            name: "http".into(),
            endpoints: vec![pb::Endpoint {
                ip: "10.44.0.12".into(),
                port: 9090,
                meshed: true,
                identity: "spiffe://cluster.local/ns/bank/sa/api".into(),
                tls: Some(pb::ClientTls {
                    mode: pb::client_tls::Mode::MeshMtls as i32,
                    expected_identities: vec!["spiffe://cluster.local/ns/bank/sa/api".into()],
                    decided_by: "auto mTLS".into(),
                    ..Default::default()
                }),
            }],
        }],
    };
    let versions: BTreeMap<String, String> = [(
        "type.googleapis.com/palisade.v1.InboundPolicy".to_string(),
        "v7".to_string(),
    )]
    .into();
    Policy::new(inbound, vec![destination], vec![], versions)
}

#[test]
fn config_mirrors_the_policy_with_mode_names() {
    let doc = config_json(&policy());
    assert_eq!(doc["inbound"]["default_mode"], "STRICT");
    assert_eq!(doc["inbound"]["port_modes"]["8080"], "DISABLE");
    assert_eq!(doc["inbound"]["spiffe_id"], ID);
    assert_eq!(
        doc["versions"]["type.googleapis.com/palisade.v1.InboundPolicy"],
        "v7"
    );
    let endpoint = &doc["destinations"][0]["ports"][0]["endpoints"][0];
    assert_eq!(endpoint["tls"]["mode"], "MESH_MTLS");
    assert_eq!(endpoint["port"], 9090);
    assert_eq!(doc["destinations"][0]["vips"][0], "10.96.0.20");
    assert_eq!(doc["workloads"], json!([]));
}

async fn get(router: &Router, path: &str) -> (StatusCode, String) {
    let response = router
        .clone()
        .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_routes_follow_the_watches() {
    let (identity_tx, identity_rx) = watch::channel(None);
    let (_trust_tx, trust_rx) = watch::channel(Arc::new(trust::parse(&root_pem()).unwrap()));
    let (policy_tx, policy_rx) = watch::channel(None);
    let shared = Shared {
        identity: identity_rx,
        trust: trust_rx,
        policy: policy_rx,
    };
    let probes = AppProbes::parse(Some(
        r#"{"/app-health/web/livez": {"grpc": {"port": 9090}}}"#,
    ))
    .unwrap();
    let metrics = ProxyMetrics::default();
    let router = router(AdminState::new(shared, metrics.clone(), probes));

    assert_eq!(
        get(&router, "/healthz").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no workload certificate yet\n".into()
        )
    );
    assert_eq!(
        get(&router, "/config").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    identity_tx.send_replace(Some(Arc::new(identity(ID, Duration::from_secs(600)))));
    assert_eq!(
        get(&router, "/healthz").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no policy from the control plane yet\n".into()
        )
    );
    policy_tx.send_replace(Some(Arc::new(policy())));
    assert_eq!(
        get(&router, "/healthz").await,
        (StatusCode::OK, "ok\n".into())
    );

    let (status, body) = get(&router, "/config").await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["inbound"]["default_mode"], "STRICT");

    let (status, body) = get(&router, "/certs").await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["certificate"]["spiffe_id"], ID);

    metrics.renewals.inc();
    let (status, body) = get(&router, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("palisade_proxy_certificate_renewals_total 1"),
        "{body}"
    );
    let expiry = body
        .lines()
        .find_map(|l| l.strip_prefix("palisade_proxy_certificate_expiry_seconds "))
        .and_then(|v| v.parse::<i64>().ok())
        .expect("expiry gauge");
    assert!((590..=600).contains(&expiry), "{expiry}");

    // Nothing serves gRPC health on that port here: the probe fails with its reason.
    let (status, reason) = get(&router, "/app-health/web/livez").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{reason}");
    assert!(!reason.trim().is_empty());
    assert_eq!(
        get(&router, "/app-health/web/readyz").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&router, "/app-health/other/livez").await.0,
        StatusCode::NOT_FOUND
    );
}
