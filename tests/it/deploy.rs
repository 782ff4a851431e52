//! The manifests under `deploy/` are valid Kubernetes 1.33 objects (checked offline by
//! `kubernetes-validate --strict`, an independent validator) and agree with the code.

use std::process::Command;

use serde_json::Value;

use crate::support::{repo_root, yaml_documents};

#[test]
fn deploy_manifests_validate_against_kubernetes_1_33() {
    let out = Command::new("kubernetes-validate")
        .args([
            "--strict",
            "-k",
            "1.33.0",
            "deploy/webhook.yaml",
            "deploy/rbac.yaml",
        ])
        .current_dir(repo_root())
        .output()
        .expect("kubernetes-validate must be installed (`make tools` installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("ERROR"), "{text}");
}

#[test]
fn webhook_configuration_matches_the_server() {
    let docs = yaml_documents(&repo_root().join("deploy/webhook.yaml"));
    let config = &docs[0];
    assert_eq!(
        config["metadata"]["name"],
        palisade::webhook::ca_bundle::WEBHOOK_CONFIGURATION
    );
    let webhooks = config["webhooks"].as_array().expect("webhooks");
    assert_eq!(webhooks.len(), 2);
    for webhook in webhooks {
        let service = &webhook["clientConfig"]["service"];
        assert_eq!(service["path"], "/inject");
        assert_eq!(service["port"], 15017);
        assert_eq!(service["namespace"], "palisade-system");
        assert_eq!(webhook["failurePolicy"], "Fail");
        // The API server gives up after `timeoutSeconds` (failurePolicy Fail): the webhook's
        // own deadline must not be longer, or a slow lookup's clear denial is never seen.
        let api_timeout = webhook["timeoutSeconds"].as_u64().unwrap_or(10);
        assert!(api_timeout < 10, "{api_timeout}");
        assert!(
            palisade::webhook::server::REQUEST_TIMEOUT.as_secs() <= api_timeout,
            "webhook deadline {:?} beyond the API server's {api_timeout}s",
            palisade::webhook::server::REQUEST_TIMEOUT
        );
        let ops = &webhook["rules"][0]["operations"];
        assert_eq!(ops, &Value::from(vec!["CREATE"]));
    }
}
