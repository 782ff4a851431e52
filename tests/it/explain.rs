//! `palisade policy explain` end to end: the binary over Istio's documentation examples.

use serde_json::{Value, json};

use crate::support::palisade;

const PA: &str = "tests/fixtures/istio/peer-authentication.yaml";
const DR: &str = "tests/fixtures/istio/destination-rule.yaml";

fn json_of(args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.extend(["-o", "json"]);
    let (ok, stdout, stderr) = palisade(&full);
    assert!(ok, "palisade {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn inbound(ns: &str, labels: &str, port: Option<&str>) -> Value {
    let mut args = vec![
        "policy",
        "explain",
        "inbound",
        "--manifests",
        PA,
        "--root-namespace",
        "istio-system",
        "--namespace",
        ns,
        "--labels",
        labels,
    ];
    if let Some(p) = port {
        args.extend(["--port", p]);
    }
    json_of(&args)
}

fn outbound(ns: &str, host: &str, port: &str, labels: &str) -> Value {
    outbound_in(DR, ns, host, port, &["--labels", labels])
}

fn outbound_in(manifests: &str, ns: &str, host: &str, port: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "policy",
        "explain",
        "outbound",
        "--manifests",
        manifests,
        "--namespace",
        ns,
        "--host",
        host,
        "--port",
        port,
    ];
    args.extend_from_slice(extra);
    json_of(&args)
}

fn decided_by(v: &Value) -> Vec<(String, String)> {
    v["decidedBy"]
        .as_array()
        .expect("decidedBy array")
        .iter()
        .map(|d| {
            (
                d["scope"].as_str().unwrap_or_default().to_string(),
                format!(
                    "{}/{}",
                    d["namespace"].as_str().unwrap_or_default(),
                    d["name"].as_str().unwrap_or_default()
                ),
            )
        })
        .collect()
}

#[test]
fn workload_policy_with_port_override() {
    let v = inbound("foo", "app=finance", Some("8080"));
    assert_eq!(v["mode"], "STRICT");
    assert_eq!(v["portModes"], json!({"8080": "DISABLE"}));
    let by = decided_by(&v);
    assert_eq!(
        by.first(),
        Some(&("mesh".to_string(), "istio-system/default".to_string()))
    );
    assert!(
        by.contains(&("namespace".to_string(), "foo/default".to_string())),
        "{by:?}"
    );
    assert!(
        by.contains(&("workload".to_string(), "foo/finance".to_string())),
        "{by:?}"
    );
    assert!(
        by.contains(&("port".to_string(), "foo/finance".to_string())),
        "{by:?}"
    );
}

#[test]
fn workload_without_mode_inherits_and_overrides_its_port() {
    let v = inbound("foo", "app=ledger", Some("9090"));
    assert_eq!(v["mode"], "STRICT", "inherits the namespace's STRICT");
    assert_eq!(v["portModes"], json!({"8080": "DISABLE", "9090": "STRICT"}));
}

#[test]
fn other_namespaces_get_the_mesh_policy_and_port_always_listed() {
    let v = inbound("bar", "app=finance", Some("8080"));
    assert_eq!(v["mode"], "PERMISSIVE");
    assert_eq!(v["portModes"], json!({"8080": "PERMISSIVE"}));
    assert_eq!(
        decided_by(&v),
        [("mesh".to_string(), "istio-system/default".to_string())]
    );
}

#[test]
fn default_root_namespace_ignores_istio_system_policy_as_a_namespace_policy() {
    // With Palisade's root namespace, istio-system/default is an ordinary namespace policy.
    let v = json_of(&[
        "policy",
        "explain",
        "inbound",
        "--manifests",
        PA,
        "--namespace",
        "bar",
        "--labels",
        "",
    ]);
    assert_eq!(v["mode"], "PERMISSIVE");
    assert_eq!(v["decidedBy"], json!([]));
}

#[test]
fn text_output_says_who_decided() {
    let (ok, out, err) = palisade(&[
        "policy",
        "explain",
        "inbound",
        "--manifests",
        PA,
        "--root-namespace",
        "istio-system",
        "--namespace",
        "foo",
        "--labels",
        "app=finance",
        "--port",
        "8080",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("Mode: STRICT"), "{out}");
    assert!(out.contains("port 8080: DISABLE"), "{out}");
    assert!(out.contains("PeerAuthentication foo/finance"), "{out}");
}

#[test]
fn outbound_rules_from_istio_examples() {
    let db = outbound("prod", "mydbserver.prod.svc.cluster.local", "5432", "");
    assert_eq!(db["tls"]["mode"], "MUTUAL");
    assert_eq!(
        db["tls"]["clientCertificate"],
        "/etc/certs/myclientcert.pem"
    );
    assert_eq!(db["rule"], json!({"namespace": "prod", "name": "db-mtls"}));

    let wildcard = outbound("prod", "api.foo.com", "443", "");
    assert_eq!(wildcard["tls"]["mode"], "SIMPLE");
    assert_eq!(wildcard["rule"]["name"], "tls-foo");

    let short = outbound("prod", "details", "9080", "");
    assert_eq!(short["host"], "details.prod.svc.cluster.local");
    assert_eq!(short["tls"]["mode"], "ISTIO_MUTUAL");

    let ratings = outbound("prod", "ratings.prod.svc.cluster.local", "9080", "");
    assert_eq!(ratings["tls"], Value::Null, "no TLS set: auto mTLS");
    assert_eq!(ratings["rule"]["name"], "bookinfo-ratings");
    let not_enforced = ratings["diagnostics"]
        .as_array()
        .expect("array")
        .iter()
        .any(|d| {
            d["kind"]["type"] == "notEnforced"
                && d["message"].as_str().unwrap_or("").contains("loadBalancer")
        });
    assert!(not_enforced, "{ratings:#}");
}

#[test]
fn port_level_settings_replace_and_workload_selector_applies() {
    let nginx443 = outbound(
        "prod",
        "my-nginx.mesh-external.svc.cluster.local",
        "443",
        "",
    );
    assert_eq!(nginx443["tls"]["mode"], "MUTUAL");
    assert_eq!(nginx443["tls"]["credentialName"], "client-credential");
    assert_eq!(
        nginx443["tls"]["sni"],
        "my-nginx.mesh-external.svc.cluster.local"
    );
    let nginx80 = outbound("prod", "my-nginx.mesh-external.svc.cluster.local", "80", "");
    assert_eq!(nginx80["tls"], Value::Null);

    let selected = outbound("prod", "example.com", "31443", "app=ratings");
    assert_eq!(selected["tls"]["mode"], "MUTUAL");
    let other = outbound("prod", "example.com", "31443", "app=reviews");
    assert_eq!(other["rule"], Value::Null);
    assert_eq!(other["tls"], Value::Null);
}

#[test]
fn rules_are_not_visible_from_other_namespaces_unless_exported() {
    // The examples live in `prod` and export to all namespaces by default.
    let from_web = outbound("web", "mydbserver.prod.svc.cluster.local", "5432", "");
    assert_eq!(from_web["tls"]["mode"], "MUTUAL");
    // A rule in `prod` for a host outside `prod` is not found from another namespace.
    let foo = outbound("web", "api.foo.com", "443", "");
    assert_eq!(foo["rule"], Value::Null);
}

#[test]
fn malformed_manifest_names_file_document_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  mtls: {mode: SOMETIMES}\n",
    )
    .expect("write");
    let path = path.to_string_lossy().into_owned();
    let (ok, _, err) = palisade(&[
        "policy",
        "explain",
        "inbound",
        "--manifests",
        &path,
        "--namespace",
        "default",
    ]);
    assert!(!ok, "must fail");
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("document 2"), "{err}");
    assert!(err.contains("spec.mtls.mode"), "{err}");
}

#[test]
fn skipped_kinds_are_noted() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("a.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n",
    )
    .expect("write");
    let path = dir.path().to_string_lossy().into_owned();
    let (ok, out, err) = palisade(&[
        "policy",
        "explain",
        "inbound",
        "--manifests",
        &path,
        "--namespace",
        "default",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("skipped v1 ConfigMap `cm`"), "{out}");
}

const SHOP: &str = "examples/shop";

fn shop(ns: &str, host: &str, port: &str, subset: Option<&str>) -> Value {
    match subset {
        Some(s) => outbound_in(SHOP, ns, host, port, &["--subset", s]),
        None => outbound_in(SHOP, ns, host, port, &[]),
    }
}

#[test]
fn dialed_service_names_expand_like_cluster_dns() {
    for host in [
        "payments.shop",
        "payments.shop.svc",
        "payments.shop.svc.cluster.local",
    ] {
        let v = shop("web", host, "80", Some("v2"));
        assert_eq!(v["host"], "payments.shop.svc.cluster.local", "{host}");
        assert_eq!(v["tls"]["mode"], "ISTIO_MUTUAL", "{host}");
        assert_eq!(
            v["expectedIdentities"],
            json!(["spiffe://cluster.local/ns/shop/sa/payments"]),
            "secure naming: the service's accounts"
        );
    }
    // `a.b` that is no known Service stays literal (it may be an external name).
    let external = shop("web", "payments.elsewhere", "80", None);
    assert_eq!(external["host"], "payments.elsewhere");
    assert_eq!(external["rule"], Value::Null);
}

#[test]
fn auto_mtls_is_decided_per_endpoint() {
    let ledger = shop("shop", "ledger", "7000", None);
    assert_eq!(ledger["tls"], Value::Null);
    assert_eq!(ledger["endpoints"][0]["workload"], "shop/ledger");
    assert_eq!(ledger["endpoints"][0]["mtls"], true);

    let db = shop("shop", "payments-db", "9187", None);
    assert_eq!(db["endpoints"][0]["mtls"], false, "not meshed: plaintext");
}

#[test]
fn export_to_dot_hides_a_rule_from_other_namespaces() {
    let inside = shop("shop", "api.partner.example.com", "443", None);
    assert_eq!(inside["tls"]["mode"], "SIMPLE");
    assert_eq!(inside["tls"]["sni"], "api.partner.example.com");
    let outside = shop("web", "api.partner.example.com", "443", None);
    assert_eq!(outside["rule"], Value::Null);
}

/// Issue 7 item 9: a root-namespace PeerAuthentication with a selector is explained to a
/// workload of any namespace its selector matches (JSON shape unchanged: one more entry in
/// `diagnostics`), and its mode is not applied.
#[test]
fn root_namespace_selector_is_explained_in_other_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pa.yaml");
    std::fs::write(
        &file,
        "apiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\nmetadata:\n  name: strict-web\n  namespace: palisade-system\nspec:\n  selector:\n    matchLabels:\n      app: web\n  mtls:\n    mode: STRICT\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let explain = |labels: &str| {
        json_of(&[
            "policy",
            "explain",
            "inbound",
            "--manifests",
            path,
            "--namespace",
            "shop",
            "--labels",
            labels,
        ])
    };
    let matched = explain("app=web");
    assert_eq!(matched["mode"], "PERMISSIVE");
    assert_eq!(matched["decidedBy"], json!([]));
    let diagnostics = matched["diagnostics"].as_array().unwrap();
    assert_eq!(diagnostics.len(), 1, "{matched:#}");
    assert_eq!(
        diagnostics[0]["kind"],
        json!({"type": "rootNamespaceSelector"})
    );
    assert_eq!(
        diagnostics[0]["object"],
        json!({"kind": "PeerAuthentication", "namespace": "palisade-system", "name": "strict-web"})
    );
    let message = diagnostics[0]["message"].as_str().unwrap();
    assert!(message.contains("move it to namespace shop"), "{message}");
    let unmatched = explain("app=db");
    assert_eq!(unmatched["diagnostics"], json!([]), "{unmatched:#}");
}
