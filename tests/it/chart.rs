//! The Helm chart agrees with the code: its CRDs are the generated ones, the controller accepts
//! the flags and injection settings the chart renders, and the names its RBAC and webhook
//! configuration use are the ones the controller looks up. (Lint, strict schema validation
//! and the structural assertions are in `scripts/chart-check.sh`, run by `make test`.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use clap::{CommandFactory, Parser};
use serde_json::Value;

use crate::support::repo_root;

const CHART: &str = "charts/palisade";

/// `helm`, installed (once, then cached) by the project's own script.
fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(install_helm)
}

fn install_helm() -> PathBuf {
    let out = Command::new(repo_root().join("scripts/install-helm.sh"))
        .output()
        .expect("scripts/install-helm.sh runs");
    assert!(
        out.status.success(),
        "installing helm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = String::from_utf8(out.stdout).expect("a UTF-8 path");
    PathBuf::from(dir.trim()).join("helm")
}

/// `helm template` into `namespace`, as JSON values.
fn render(namespace: &str, values: Option<&str>) -> Vec<Value> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "palisade", CHART, "--namespace", namespace])
        .current_dir(repo_root());
    if let Some(file) = values {
        cmd.args(["-f", file]);
    }
    let out = cmd.output().expect("helm runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple::<Value>(&text)
        .expect("helm renders YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the chart renders no {kind}/{name}"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn chart_crds_are_the_generated_ones() {
    let rendered = palisade::cli::crds::render().expect("renders");
    let dir = repo_root().join(CHART).join("crds");
    let mut in_chart: Vec<String> = std::fs::read_dir(&dir)
        .expect("the chart has a crds/ directory")
        .map(|e| {
            e.expect("readable")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    in_chart.sort();
    let mut generated: Vec<String> = rendered.iter().map(|(f, _)| f.to_string()).collect();
    generated.sort();
    assert_eq!(
        in_chart, generated,
        "{CHART}/crds has other files than `palisade crds`"
    );
    for (file, yaml) in rendered {
        let committed = std::fs::read_to_string(dir.join(file)).expect("readable");
        assert!(
            committed == yaml,
            "{CHART}/crds/{file} is stale: run `make crds` and commit the result"
        );
    }
}

/// Parses the rendered container's arguments with the real command line, the injection
/// settings file swapped for a copy of the rendered ConfigMap.
fn controller_config(docs: &[Value], scratch: &Path) -> palisade::server::Config {
    let container =
        &object(docs, "Deployment", "palisade")["spec"]["template"]["spec"]["containers"][0];
    let env = container["env"].as_array().expect("env");
    let namespace_from = env
        .iter()
        .find(|e| e["name"] == "POD_NAMESPACE")
        .expect("POD_NAMESPACE is set");
    assert_eq!(
        namespace_from["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    let config_map = object(docs, "ConfigMap", "palisade-injection");
    let injection = scratch.join("injection.yaml");
    let text = config_map["data"]["injection.yaml"]
        .as_str()
        .expect("injection.yaml");
    std::fs::write(&injection, text).expect("write");

    let mount = container["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "injection"))
        .expect("the injection settings are mounted");
    let flag = format!(
        "--injection-config={}/injection.yaml",
        mount["mountPath"].as_str().expect("mountPath")
    );
    let mut args = vec!["palisade".to_string()];
    for arg in strings(&container["args"]) {
        if arg == flag {
            args.push(format!("--injection-config={}", injection.display()));
        } else {
            assert!(
                !arg.starts_with("--injection-config"),
                "{arg} is not where the ConfigMap is mounted"
            );
            args.push(arg.to_string());
        }
    }
    // The downward API fills POD_NAMESPACE, which `--namespace` reads.
    let cli = palisade::cli::Cli::command();
    let namespace_arg = cli
        .find_subcommand("controller")
        .and_then(|c| c.get_arguments().find(|a| a.get_id() == "namespace"))
        .expect("controller has --namespace");
    assert_eq!(
        namespace_arg.get_env().and_then(|e| e.to_str()),
        Some("POD_NAMESPACE")
    );
    let namespace = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .and_then(|d| d["metadata"]["namespace"].as_str())
        .expect("the Deployment has a namespace");
    args.push(format!("--namespace={namespace}"));

    let parsed = palisade::cli::Cli::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("the controller refuses the chart's arguments {args:?}: {e}"));
    let palisade::cli::Command::Controller(controller) = parsed.command else {
        panic!("the chart does not run `palisade controller`: {args:?}");
    };
    controller
        .to_config()
        .unwrap_or_else(|e| panic!("the controller refuses the chart's settings: {e:#}"))
}

#[test]
fn the_controller_accepts_what_the_chart_renders() {
    let cases = [
        (
            "palisade-system",
            None,
            "ghcr.io/palisade-dev/palisade:0.1.0",
            "palisade.palisade-system.svc:15012",
            "cluster.local",
        ),
        (
            "mesh-ctl",
            Some("charts/palisade/ci/custom-values.yaml"),
            "registry.example.test/mesh/palisade-proxy:1.2.3",
            "palisade.mesh-ctl.svc.cluster.local:15012",
            "prod.example.test",
        ),
    ];
    for (namespace, values, proxy_image, ca_address, trust_domain) in cases {
        let docs = render(namespace, values);
        let scratch = tempfile::tempdir().expect("tempdir");
        let config = controller_config(&docs, scratch.path());
        assert_eq!(config.namespace, namespace);
        assert_eq!(config.policy.trust_domain, trust_domain);
        assert_eq!(config.injection.image, proxy_image);
        assert_eq!(config.injection.ca_address, ca_address);
        assert_eq!(config.injection.control_plane_namespace, namespace);
        assert!(config.policy.default_ttl <= config.policy.max_ttl);

        // The listeners are where the Service, the webhook and the probes send traffic.
        let container =
            &object(&docs, "Deployment", "palisade")["spec"]["template"]["spec"]["containers"][0];
        let port = |name: &str| {
            container["ports"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["name"] == name))
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("no container port {name}"))
        };
        assert_eq!(u64::from(config.grpc_addr.port()), port("grpc"));
        assert_eq!(u64::from(config.webhook_addr.port()), port("webhook"));
        assert_eq!(u64::from(config.monitor_addr.port()), port("monitor"));
        assert_eq!(
            object(&docs, "Service", "palisade")["metadata"]["name"],
            config.service_name
        );
    }
}

#[test]
fn chart_names_are_the_ones_the_code_uses() {
    let docs = render("palisade-system", None);
    let names = |kind: &str| -> Vec<String> {
        object(&docs, kind, "palisade-controller")["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .flat_map(|r| strings(&r["resourceNames"]))
            .map(str::to_string)
            .collect()
    };
    let cluster = names("ClusterRole");
    let namespaced = names("Role");
    for name in [
        palisade::webhook::ca_bundle::WEBHOOK_CONFIGURATION,
        palisade::webhook::containers::ROOT_CERT_CONFIGMAP,
    ] {
        assert!(
            cluster.iter().any(|n| n == name),
            "ClusterRole lacks {name}"
        );
    }
    for name in [
        palisade::controller::leader::LEASE_NAME,
        palisade::ca::kube_store::SECRET_NAME,
        palisade::ca::plugin::SECRET_NAME,
    ] {
        assert!(namespaced.iter().any(|n| n == name), "Role lacks {name}");
    }

    let webhook = object(
        &docs,
        "MutatingWebhookConfiguration",
        palisade::webhook::ca_bundle::WEBHOOK_CONFIGURATION,
    );
    for hook in webhook["webhooks"].as_array().expect("webhooks") {
        // The API server gives up after `timeoutSeconds` (failurePolicy Fail): the webhook's
        // own deadline must not be longer, or a slow lookup's clear denial is never seen.
        let api_timeout = hook["timeoutSeconds"].as_u64().expect("timeoutSeconds");
        assert!(
            palisade::webhook::server::REQUEST_TIMEOUT.as_secs() <= api_timeout,
            "webhook deadline {:?} beyond the API server's {api_timeout}s",
            palisade::webhook::server::REQUEST_TIMEOUT
        );
        let keys = |selector: &str| -> Vec<&str> {
            hook[selector]["matchExpressions"]
                .as_array()
                .expect("matchExpressions")
                .iter()
                .filter_map(|e| e["key"].as_str())
                .collect()
        };
        assert!(
            keys("namespaceSelector").contains(&palisade::webhook::inject::NAMESPACE_INJECT_LABEL)
        );
        assert_eq!(
            keys("objectSelector"),
            [palisade::webhook::inject::POD_INJECT_LABEL]
        );
        assert_eq!(hook["clientConfig"]["service"]["path"], "/inject");
    }
}
