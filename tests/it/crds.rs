//! The CRDs: committed YAML is current, CEL rules hold, and Istio's documentation examples are
//! accepted by our schemas after the apiVersion change.

use std::process::Command;

use kube::core::cel::{Validator, compile_schema};
use serde_json::{Value, json};

use crate::support::{fixture, repo_root, to_palisade_api, yaml_documents};

fn schema(kind: &str) -> Value {
    let crd = palisade::api::crd::all()
        .into_iter()
        .map(|(_, crd)| crd)
        .find(|crd| crd.spec.names.kind == kind)
        .expect("CRD exists");
    palisade::api::crd::schema_of(&crd).expect("CRD has a schema")
}

fn cel_errors(kind: &str, object: &Value) -> Vec<String> {
    match Validator::new().validate(&schema(kind), object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

#[test]
fn committed_crds_match_the_types() {
    for (file, yaml) in palisade::cli::crds::render().expect("renders") {
        let path = repo_root().join("crds").join(file);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `make crds`", path.display()));
        assert!(
            committed == yaml,
            "{} is stale: run `make crds` and commit the result",
            path.display()
        );
    }
}

#[test]
fn every_cel_rule_compiles() {
    for kind in [
        "PeerAuthentication",
        "DestinationRule",
        "AuthorizationPolicy",
    ] {
        let compiled = compile_schema(&schema(kind));
        assert!(
            !compiled.has_errors(),
            "{kind}: {:?}",
            compiled.compilation_errors()
        );
    }
}

#[test]
fn crds_have_short_names_printer_columns_and_status() {
    for (_, crd) in palisade::api::crd::all() {
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1");
        assert!(version.served && version.storage);
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        let short = crd.spec.names.short_names.clone().unwrap_or_default();
        match crd.spec.names.kind.as_str() {
            "PeerAuthentication" => {
                assert_eq!(crd.spec.group, "security.palisade.dev");
                assert_eq!(short, ["pa"]);
                assert_eq!(columns, ["Mode", "Accepted", "Reason", "Age"]);
            }
            "DestinationRule" => {
                assert_eq!(crd.spec.group, "networking.palisade.dev");
                assert_eq!(short, ["dr"]);
                assert_eq!(columns, ["Host", "Accepted", "Reason", "Age"]);
            }
            "AuthorizationPolicy" => {
                assert_eq!(crd.spec.group, "security.palisade.dev");
                assert_eq!(short, ["ap"]);
                assert_eq!(columns, ["Action", "Accepted", "Reason", "Age"]);
            }
            other => panic!("unexpected CRD {other}"),
        }
    }
}

fn pa(spec: Value) -> Value {
    json!({"apiVersion": "security.palisade.dev/v1", "kind": "PeerAuthentication",
           "metadata": {"name": "p", "namespace": "foo"}, "spec": spec})
}

fn dr(spec: Value) -> Value {
    json!({"apiVersion": "networking.palisade.dev/v1", "kind": "DestinationRule",
           "metadata": {"name": "r", "namespace": "foo"}, "spec": spec})
}

fn ap(spec: Value) -> Value {
    json!({"apiVersion": "security.palisade.dev/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": "a", "namespace": "foo"}, "spec": spec})
}

/// Each case: a spec, and the message a CEL rule must reject it with (None: accepted).
fn assert_cel_cases(kind: &str, wrap: fn(Value) -> Value, cases: &[(Value, Option<&str>)]) {
    for (spec, expected) in cases {
        let errors = cel_errors(kind, &wrap(spec.clone()));
        match expected {
            None => assert!(errors.is_empty(), "{spec}: unexpected {errors:?}"),
            Some(text) => assert!(
                errors.iter().any(|e| e.contains(text)),
                "{spec}: expected `{text}`, got {errors:?}"
            ),
        }
    }
}

#[test]
fn peer_authentication_cel_rules() {
    let cases = [
        (json!({"mtls": {"mode": "STRICT"}}), None),
        (
            json!({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
            None,
        ),
        (
            json!({"portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
            Some("requires a non-empty selector"),
        ),
        (
            json!({"selector": {}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
            Some("requires a non-empty selector"),
        ),
        (
            json!({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"0": {"mode": "DISABLE"}}}),
            Some("between 1 and 65535"),
        ),
        (
            json!({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"65536": {"mode": "DISABLE"}}}),
            Some("between 1 and 65535"),
        ),
        (
            json!({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"http": {"mode": "DISABLE"}}}),
            Some("between 1 and 65535"),
        ),
    ];
    assert_cel_cases("PeerAuthentication", pa, &cases);
}

#[test]
fn destination_rule_cel_rules() {
    let tls = |tls: Value| json!({"host": "h", "trafficPolicy": {"tls": tls}});
    let cases = [
        (tls(json!({"mode": "ISTIO_MUTUAL"})), None),
        (
            tls(json!({"mode": "MUTUAL", "clientCertificate": "/c", "privateKey": "/k"})),
            None,
        ),
        (
            tls(json!({"mode": "MUTUAL", "credentialName": "cred"})),
            None,
        ),
        (
            tls(json!({"mode": "MUTUAL", "clientCertificate": "/c"})),
            Some("requires clientCertificate and privateKey"),
        ),
        (
            tls(json!({"mode": "MUTUAL"})),
            Some("requires clientCertificate and privateKey"),
        ),
        (
            tls(json!({"mode": "MUTUAL", "credentialName": "c", "caCertificates": "/ca"})),
            Some("credentialName cannot be combined"),
        ),
        (
            tls(json!({"mode": "SIMPLE", "insecureSkipVerify": true, "subjectAltNames": ["a"]})),
            Some("insecureSkipVerify cannot be combined"),
        ),
        (
            tls(json!({"mode": "SIMPLE", "insecureSkipVerify": true, "caCertificates": "/ca"})),
            Some("insecureSkipVerify cannot be combined"),
        ),
        (
            tls(json!({"mode": "SIMPLE", "insecureSkipVerify": false, "caCertificates": "/ca"})),
            None,
        ),
        (
            json!({"host": "h", "subsets": [{"name": "a"}, {"name": "b"}]}),
            None,
        ),
        (
            json!({"host": "h", "subsets": [{"name": "a"}, {"name": "a"}]}),
            Some("subset names must be unique"),
        ),
        (json!({"host": ""}), Some("host must not be empty")),
        // The rules hold wherever TLS settings appear: port level and subsets.
        (
            json!({"host": "h", "trafficPolicy": {"portLevelSettings": [{"port": {"number": 443}, "tls": {"mode": "MUTUAL"}}]}}),
            Some("requires clientCertificate"),
        ),
        (
            json!({"host": "h", "subsets": [{"name": "a", "trafficPolicy": {"tls": {"mode": "MUTUAL", "credentialName": "c", "privateKey": "/k"}}}]}),
            Some("credentialName cannot be combined"),
        ),
    ];
    assert_cel_cases("DestinationRule", dr, &cases);
}

#[test]
fn authorization_policy_cel_rules() {
    let from = |source: Value| json!({"rules": [{"from": [{"source": source}]}]});
    let cases = [
        (json!({}), None),
        (json!({"rules": [{}]}), None),
        (
            from(json!({"principals": ["cluster.local/ns/a/sa/b"]})),
            None,
        ),
        (
            json!({"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{}]}),
            None,
        ),
        (
            json!({"action": "DENY", "provider": {"name": "ext"}}),
            Some("provider may only be set with action CUSTOM"),
        ),
        (
            json!({"provider": {"name": "ext"}}),
            Some("provider may only be set with action CUSTOM"),
        ),
        (
            json!({"action": "CUSTOM", "rules": [{}]}),
            Some("action CUSTOM requires provider.name"),
        ),
        (
            json!({"selector": {"matchLabels": {"app": "a"}}, "targetRef": {"kind": "Gateway", "name": "g"}}),
            Some("selector cannot be combined with targetRef"),
        ),
        (
            json!({"selector": {"matchLabels": {"app": "a"}}, "targetRefs": [{"kind": "Gateway", "name": "g"}]}),
            Some("selector cannot be combined with targetRef"),
        ),
        (
            json!({"targetRef": {"kind": "Gateway", "name": "g"}, "targetRefs": [{"kind": "Gateway", "name": "h"}]}),
            Some("targetRef and targetRefs cannot both be set"),
        ),
        (
            json!({"rules": [{"from": []}]}),
            Some("from must not be empty"),
        ),
        (json!({"rules": [{"to": []}]}), Some("to must not be empty")),
        (
            json!({"rules": [{"when": []}]}),
            Some("when must not be empty"),
        ),
        (
            json!({"rules": [{"from": [{}]}]}),
            Some("from.source must be set and not empty"),
        ),
        (
            from(json!({})),
            Some("from.source must be set and not empty"),
        ),
        (
            json!({"rules": [{"to": [{"operation": {}}]}]}),
            Some("to.operation must be set and not empty"),
        ),
        (
            from(json!({"principals": ["a"], "serviceAccounts": ["ns/sa"]})),
            Some("serviceAccounts and notServiceAccounts cannot be combined"),
        ),
        (
            json!({"rules": [{"to": [{"operation": {"ports": ["0"]}}]}]}),
            Some("ports must be port numbers"),
        ),
        (
            json!({"rules": [{"to": [{"operation": {"notPorts": ["http"]}}]}]}),
            Some("notPorts must be port numbers"),
        ),
        (
            json!({"rules": [{"when": [{"key": "source.ip"}]}]}),
            Some("a condition needs values or notValues"),
        ),
        (
            json!({"rules": [{"when": [{"key": "", "values": ["x"]}]}]}),
            Some("key must not be empty"),
        ),
    ];
    assert_cel_cases("AuthorizationPolicy", ap, &cases);
}

/// Runs `check-jsonschema` (an independent validator) over `docs` against our CRD schema.
fn check_jsonschema(kind: &str, docs: &[Value]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema_path = dir.path().join("schema.json");
    std::fs::write(&schema_path, schema(kind).to_string()).expect("write schema");
    let mut files = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let path = dir.path().join(format!("doc-{i}.json"));
        std::fs::write(&path, doc.to_string()).expect("write doc");
        files.push(path);
    }
    Command::new("check-jsonschema")
        .arg("--schemafile")
        .arg(&schema_path)
        .args(&files)
        .output()
        .expect("check-jsonschema must be installed (`make tools` installs it)")
}

#[test]
fn istio_documentation_examples_are_accepted_by_our_schemas() {
    for (file, kind) in [
        ("istio/peer-authentication.yaml", "PeerAuthentication"),
        ("istio/destination-rule.yaml", "DestinationRule"),
        ("istio/authorization-policy.yaml", "AuthorizationPolicy"),
    ] {
        let docs: Vec<Value> = yaml_documents(&fixture(file))
            .into_iter()
            .map(to_palisade_api)
            .collect();
        assert!(docs.len() >= 4, "{file}: fixtures present");
        let out = check_jsonschema(kind, &docs);
        assert!(
            out.status.success(),
            "{file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for doc in &docs {
            let errors = cel_errors(kind, doc);
            assert!(errors.is_empty(), "{doc}: {errors:?}");
        }
    }
}

#[test]
fn schema_rejects_bad_enums_and_ports() {
    let bad = [
        (
            "PeerAuthentication",
            pa(json!({"mtls": {"mode": "STRICTLY"}})),
        ),
        (
            "DestinationRule",
            dr(json!({"host": "h", "trafficPolicy": {"tls": {"mode": "TLS"}}})),
        ),
        (
            "DestinationRule",
            dr(
                json!({"host": "h", "trafficPolicy": {"portLevelSettings": [{"port": {"number": 70000}}]}}),
            ),
        ),
        ("DestinationRule", dr(json!({"trafficPolicy": {}}))),
        ("AuthorizationPolicy", ap(json!({"action": "REJECT"}))),
        (
            "AuthorizationPolicy",
            ap(json!({"rules": [{"from": [{"source": {"principals": "a"}}]}]})),
        ),
    ];
    for (kind, doc) in bad {
        let out = check_jsonschema(kind, std::slice::from_ref(&doc));
        assert!(!out.status.success(), "{doc} should be rejected");
    }
}

/// The status the controller writes validates against the CRD schema (check-jsonschema and the
/// CEL rules), and the printer columns read the condition it writes.
#[test]
fn written_statuses_fit_the_schema_and_the_columns() {
    use palisade::controller::status::{ACCEPTED, policy_status};
    use palisade::policy::{Diagnostic, DiagnosticKind, ObjectRef, PolicyKind, Severity};

    let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let lost = Diagnostic {
        severity: Severity::Warning,
        object: ObjectRef {
            kind: PolicyKind::PeerAuthentication,
            namespace: "foo".into(),
            name: "p".into(),
        },
        kind: DiagnosticKind::Conflict {
            winner: ObjectRef {
                kind: PolicyKind::PeerAuthentication,
                namespace: "foo".into(),
                name: "older".into(),
            },
        },
        message: "lost to the older namespace-wide policy".into(),
    };
    let statuses = [
        policy_status(&[], false, Some(2), None, now),
        policy_status(&[&lost], true, Some(3), None, now),
    ];
    for (kind, wrap, spec) in [
        (
            "PeerAuthentication",
            pa as fn(Value) -> Value,
            json!({"mtls": {"mode": "STRICT"}}),
        ),
        ("DestinationRule", dr, json!({"host": "reviews"})),
    ] {
        let docs: Vec<Value> = statuses
            .iter()
            .map(|s| {
                let mut doc = wrap(spec.clone());
                doc["status"] = serde_json::to_value(s).unwrap();
                doc
            })
            .collect();
        let out = check_jsonschema(kind, &docs);
        assert!(
            out.status.success(),
            "{kind}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for doc in &docs {
            assert!(cel_errors(kind, doc).is_empty(), "{doc}");
        }
    }
    for (_, crd) in palisade::api::crd::all() {
        let columns = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        let path_of = |name: &str| {
            columns
                .iter()
                .find(|c| c.name == name)
                .map(|c| (c.json_path.clone(), c.priority))
        };
        let condition = format!(".status.conditions[?(@.type==\"{ACCEPTED}\")]");
        assert_eq!(
            path_of("Accepted"),
            Some((format!("{condition}.status"), None))
        );
        // The reason only with `-o wide`.
        assert_eq!(
            path_of("Reason"),
            Some((format!("{condition}.reason"), Some(1)))
        );
    }
}
