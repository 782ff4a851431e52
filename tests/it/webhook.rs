//! Golden tests of the mutation: every pod fixture under `tests/fixtures/webhook/` goes through
//! `decide`; a patch is applied with `json_patch` to the pod exactly as written (as the API
//! server would), the result must deserialize into a k8s-openapi `Pod` and match
//! `<fixture>.golden.json`. A second invocation on the mutated pod must leave it unchanged.
//!
//! `PALISADE_BLESS=1 cargo test -q webhook::` rewrites the golden files; review the diff.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use palisade::webhook::{Decision, InjectionConfig, SkipReason, decide};
use serde_json::{Value, json};

use crate::support;

/// The configuration every golden file was made with (a fixed image, so releases do not
/// change them).
pub fn test_config() -> InjectionConfig {
    InjectionConfig {
        image: "registry.example/palisade:test".into(),
        ..InjectionConfig::default()
    }
}

struct Fixture {
    namespace: String,
    namespace_labels: BTreeMap<String, String>,
    pod_json: Value,
}

fn load(path: &Path) -> Fixture {
    let doc = support::yaml_documents(path).remove(0);
    Fixture {
        namespace: doc["namespace"].as_str().expect("namespace").to_string(),
        namespace_labels: serde_json::from_value(doc["namespaceLabels"].clone())
            .expect("namespaceLabels"),
        pod_json: doc["pod"].clone(),
    }
}

fn apply(pod_json: &Value, ops: &[json_patch::PatchOperation]) -> Value {
    let mut doc = pod_json.clone();
    // The patch travels as JSON: check it survives the round trip the API server makes.
    let wire = serde_json::to_string(ops).unwrap();
    let ops: Vec<json_patch::PatchOperation> = serde_json::from_str(&wire).unwrap();
    json_patch::patch(&mut doc, &ops).unwrap_or_else(|e| panic!("patch applies: {e}"));
    doc
}

/// The outcome of one fixture, as stored in its golden file.
fn outcome(f: &Fixture) -> Value {
    let pod: Pod = serde_json::from_value(f.pod_json.clone()).expect("fixture is a Pod");
    match decide(&pod, &f.namespace, &f.namespace_labels, &test_config()) {
        Decision::Patch(ops) => {
            let patched = apply(&f.pod_json, &ops);
            let injected: Pod =
                serde_json::from_value(patched.clone()).expect("patched pod is a valid Pod");
            // Nothing the patch wrote is lost on the way through the typed Pod.
            assert_eq!(serde_json::to_value(&injected).unwrap(), patched);
            // Reinvocation: the webhook sees its own result and leaves it alone.
            let again = decide(&injected, &f.namespace, &f.namespace_labels, &test_config());
            assert_eq!(
                again,
                Decision::Skip {
                    reason: SkipReason::AlreadyInjected
                }
            );
            json!({"decision": "patch", "pod": injected})
        }
        Decision::Skip { reason } => json!({"decision": "skip", "reason": reason.as_str()}),
        Decision::Deny { message } => json!({"decision": "deny", "message": message}),
    }
}

#[test]
fn golden_pods() {
    let dir = support::fixture("webhook");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 15, "fixtures missing from {}", dir.display());
    let bless = std::env::var_os("PALISADE_BLESS").is_some();
    let mut failures = Vec::new();
    for path in &names {
        let actual = outcome(&load(path));
        let golden = path.with_extension("golden.json");
        let text = format!("{}\n", serde_json::to_string_pretty(&actual).unwrap());
        if bless {
            std::fs::write(&golden, &text).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{} missing: run with PALISADE_BLESS=1", golden.display()));
        if expected != text {
            failures.push(format!(
                "{}: differs from {}\n--- actual:\n{text}",
                path.display(),
                golden.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn decisions_per_fixture() {
    let expect = [
        ("single-container", "patch"),
        ("several-containers", "patch"),
        ("existing-init-containers", "patch"),
        ("probes", "patch"),
        ("named-ports", "patch"),
        ("opted-in", "patch"),
        ("traffic-annotations", "patch"),
        ("dual-stack-annotations", "patch"),
        ("host-network", "host_network"),
        ("opted-out", "opted_out"),
        ("not-enabled", "not_enabled"),
        ("already-injected", "already_injected"),
        ("control-plane", "control_plane_namespace"),
        ("bad-annotation", "deny"),
        ("bad-ipv6-annotation", "deny"),
        ("name-conflict", "deny"),
        ("undeclared-probe-port", "deny"),
    ];
    for (name, want) in expect {
        let out = outcome(&load(&support::fixture(&format!("webhook/{name}.yaml"))));
        let got = match out["decision"].as_str().unwrap() {
            "skip" => out["reason"].as_str().unwrap().to_string(),
            other => other.to_string(),
        };
        assert_eq!(got, want, "{name}");
    }
}

fn injected(name: &str) -> Pod {
    let out = outcome(&load(&support::fixture(&format!("webhook/{name}.yaml"))));
    serde_json::from_value(out["pod"].clone()).unwrap()
}

#[test]
fn proxy_is_a_hardened_native_sidecar_after_init() {
    let pod = injected("existing-init-containers");
    let spec = pod.spec.unwrap();
    let inits = spec.init_containers.unwrap();
    let names: Vec<&str> = inits.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "palisade-init",
            "palisade-proxy",
            "wait-for-db",
            "log-agent"
        ]
    );
    let proxy = &inits[1];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group), (Some(1337), Some(1337)));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert!(caps.add.is_none());
    assert!(proxy.startup_probe.is_some() && proxy.readiness_probe.is_some());
    let init_caps = inits[0]
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(
        init_caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    let volumes: Vec<String> = spec.volumes.unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(
        volumes,
        [
            "config",
            "palisade-token",
            "palisade-ca-root-cert",
            "palisade-run"
        ]
    );
}

#[test]
fn token_volume_and_downward_env() {
    let pod = injected("single-container");
    let spec = pod.spec.unwrap();
    let token = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "palisade-token")
        .unwrap();
    let sat = token.projected.unwrap().sources.unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(sat.audience.as_deref(), Some("palisade-ca"));
    assert_eq!(sat.expiration_seconds, Some(43200));
    assert_eq!(sat.path, "palisade-token");
    let proxy = &spec.init_containers.unwrap()[1];
    let env: BTreeMap<String, Option<String>> = proxy
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| {
            let field = e.value_from.and_then(|v| v.field_ref).map(|f| f.field_path);
            (e.name, field)
        })
        .collect();
    assert_eq!(env["POD_NAME"].as_deref(), Some("metadata.name"));
    assert_eq!(env["POD_NAMESPACE"].as_deref(), Some("metadata.namespace"));
    assert_eq!(env["INSTANCE_IP"].as_deref(), Some("status.podIP"));
    assert_eq!(
        env["SERVICE_ACCOUNT"].as_deref(),
        Some("spec.serviceAccountName")
    );
    let mounts = proxy.volume_mounts.clone().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.name == "palisade-token"
                && m.mount_path == "/var/run/secrets/palisade/tokens")
    );
    let labels = pod.metadata.labels.unwrap();
    assert_eq!(labels["security.palisade.dev/tlsMode"], "palisade");
    let status: Value =
        serde_json::from_str(&pod.metadata.annotations.unwrap()["sidecar.palisade.dev/status"])
            .unwrap();
    assert_eq!(
        status["initContainers"],
        json!(["palisade-init", "palisade-proxy"])
    );
}

#[test]
fn rewritten_probes_reach_the_proxy_with_numeric_ports() {
    let pod = injected("probes");
    let spec = pod.spec.unwrap();
    let api = &spec.containers[0];
    let live = api.liveness_probe.as_ref().unwrap();
    let http = live.http_get.as_ref().unwrap();
    assert_eq!(http.path.as_deref(), Some("/app-health/api/livez"));
    assert_eq!(live.initial_delay_seconds, Some(3));
    assert_eq!(
        api.startup_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/app-health/api/startupz")
    );
    // The exec probe is untouched.
    assert!(
        spec.containers[1]
            .liveness_probe
            .as_ref()
            .unwrap()
            .exec
            .is_some()
    );
    let proxy = &spec.init_containers.unwrap()[1];
    let probes = proxy
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "PALISADE_APP_PROBES")
        .and_then(|e| e.value.clone())
        .unwrap();
    let probes: Value = serde_json::from_str(&probes).unwrap();
    assert_eq!(probes["/app-health/api/livez"]["httpGet"]["port"], 8080);
    assert_eq!(
        probes["/app-health/api/livez"]["httpGet"]["httpHeaders"][0]["value"],
        "liveness"
    );
    assert_eq!(probes["/app-health/api/readyz"]["tcpSocket"]["port"], 8080);
    assert_eq!(
        probes["/app-health/api/startupz"]["grpc"]["service"],
        "api.Health"
    );
    assert_eq!(
        probes["/app-health/worker/readyz"]["httpGet"]["scheme"],
        "HTTPS"
    );
    assert!(probes.get("/app-health/worker/livez").is_none());
}

#[test]
fn deny_messages_name_the_problem() {
    let out = outcome(&load(&support::fixture("webhook/bad-annotation.yaml")));
    let message = out["message"].as_str().unwrap();
    assert!(
        message.contains("traffic.palisade.dev/excludeOutboundIPRanges")
            && message.contains("192.168.0.0/33"),
        "{message}"
    );
}
