//! `palisade policy explain authz` end to end: the binary over Istio-style AuthorizationPolicy
//! manifests (`security.istio.io` apiVersions).

use serde_json::Value;

use crate::support::palisade;

const AP: &str = "tests/fixtures/istio/authorization-policy.yaml";

fn authz(extra: &[&str]) -> Value {
    let mut args = vec![
        "policy",
        "explain",
        "authz",
        "--manifests",
        AP,
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = palisade(&args);
    assert!(ok, "palisade {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn decided(v: &Value) -> (String, String, Value) {
    let by = &v["decidedBy"][0];
    (
        v["decision"].as_str().unwrap_or_default().to_string(),
        by["name"].as_str().unwrap_or("-").to_string(),
        by["rule"].clone(),
    )
}

#[test]
fn decisions_name_the_policy_and_rule() {
    let frontend = "spiffe://cluster.local/ns/shop/sa/frontend";
    // The namespace-wide allow-all lets the frontend in; orders-readers' rule uses HTTP fields,
    // so it can never match at L4, and the explainer says so.
    let v = authz(&[
        "-n",
        "shop",
        "-l",
        "app=orders",
        "--port",
        "8080",
        "--from",
        frontend,
    ]);
    assert_eq!(
        decided(&v),
        ("ALLOW".into(), "allow-all".into(), Value::from(0))
    );
    assert_eq!(v["reason"], "allowMatched");
    let diagnostics = v["diagnostics"].as_array().expect("array");
    assert!(
        diagnostics
            .iter()
            .any(|d| d["kind"]["type"] == "notEnforced"
                && d["kind"]["field"] == "spec.rules[0].to[0].operation.methods"
                && d["object"]["name"] == "orders-readers")
    );
    // A root-namespace DENY by namespace wins over the allow-all.
    let v = authz(&[
        "-n",
        "shop",
        "--port",
        "8080",
        "--from",
        "spiffe://cluster.local/ns/untrusted/sa/x",
    ]);
    assert_eq!(
        decided(&v),
        (
            "DENY".into(),
            "deny-untrusted-namespace".into(),
            Value::from(0)
        )
    );
    // CUSTOM is not supported: it denies what it applies to.
    let v = authz(&[
        "-n",
        "shop",
        "-l",
        "app=admin",
        "--port",
        "8080",
        "--from",
        frontend,
    ]);
    assert_eq!(
        decided(&v),
        ("DENY".into(), "external-authz".into(), Value::Null)
    );
    assert_eq!(v["reason"], "customUnsupported");
    // A plaintext client from outside the allowed ranges, to port 5432: denied by address.
    let v = authz(&[
        "-n",
        "shop",
        "--port",
        "5432",
        "--from-plaintext",
        "--source-ip",
        "192.168.1.1",
    ]);
    assert_eq!(
        decided(&v),
        ("DENY".into(), "deny-outside-ranges".into(), Value::from(0))
    );
    let v = authz(&[
        "-n",
        "shop",
        "--port",
        "5432",
        "--from-plaintext",
        "--source-ip",
        "10.1.2.3",
    ]);
    assert_eq!(
        decided(&v),
        ("ALLOW".into(), "allow-all".into(), Value::from(0))
    );
    // Another namespace: no policy applies but the root namespace's DENY.
    let v = authz(&["-n", "web", "--port", "80", "--from", frontend]);
    assert_eq!(v["decision"], "ALLOW");
    assert_eq!(v["decidedBy"], Value::Array(vec![]));
    assert_eq!(v["reason"], "noAllowPolicy");
}

#[test]
fn text_output_and_bad_peers() {
    let (ok, stdout, stderr) = palisade(&[
        "policy",
        "explain",
        "authz",
        "--manifests",
        AP,
        "-n",
        "shop",
        "-l",
        "app=admin",
        "--port",
        "8080",
        "--from-plaintext",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Decision: DENY"), "{stdout}");
    assert!(stdout.contains("CUSTOM"), "{stdout}");
    assert!(
        stdout.contains("AuthorizationPolicy shop/external-authz"),
        "{stdout}"
    );
    // An identity that is not a workload SPIFFE ID is refused, as is naming no peer.
    for bad in [
        vec!["--from", "cluster.local/ns/a/sa/b"],
        vec![],
        vec![
            "--from",
            "spiffe://cluster.local/ns/a/sa/b",
            "--from-plaintext",
        ],
    ] {
        let mut args = vec![
            "policy",
            "explain",
            "authz",
            "--manifests",
            AP,
            "-n",
            "shop",
            "--port",
            "80",
        ];
        args.extend(bad.iter().copied());
        let (ok, _, stderr) = palisade(&args);
        assert!(!ok, "{bad:?} must fail");
        assert!(!stderr.is_empty());
    }
}
