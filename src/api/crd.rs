//! CRD manifests, generated from the types (the source of `crds/`).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

use super::{AuthorizationPolicy, DestinationRule, PeerAuthentication};

/// Every CRD Palisade serves, with the file name each has under `crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        (
            "peerauthentications.security.palisade.dev.yaml",
            finish(PeerAuthentication::crd()),
        ),
        (
            "destinationrules.networking.palisade.dev.yaml",
            finish(DestinationRule::crd()),
        ),
        (
            "authorizationpolicies.security.palisade.dev.yaml",
            finish(AuthorizationPolicy::crd()),
        ),
    ]
}

/// The openAPIV3Schema of a CRD as JSON, for validating objects offline.
pub fn schema_of(crd: &CustomResourceDefinition) -> Option<Value> {
    let schema = crd
        .spec
        .versions
        .first()?
        .schema
        .as_ref()?
        .open_api_v3_schema
        .as_ref()?;
    serde_json::to_value(schema).ok()
}

/// Adjusts the derived schema to what the API server accepts and validates well: schemars
/// emits JSON-Schema integer formats (`uint32`, `uint64`) that Kubernetes does not know; a
/// `uint32` becomes an explicit upper bound instead.
fn finish(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    crd.metadata.labels = Some(
        [(
            "app.kubernetes.io/part-of".to_string(),
            "palisade".to_string(),
        )]
        .into_iter()
        .collect(),
    );
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.take())
        else {
            continue;
        };
        let Ok(mut value) = serde_json::to_value(&schema) else {
            continue;
        };
        normalize_integers(&mut value);
        let fixed = serde_json::from_value(value).unwrap_or(schema);
        if let Some(s) = version.schema.as_mut() {
            s.open_api_v3_schema = Some(fixed);
        }
    }
    crd
}

fn normalize_integers(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("type").and_then(Value::as_str) == Some("integer") {
                match map.get("format").and_then(Value::as_str) {
                    Some("uint32") => {
                        map.remove("format");
                        map.entry("maximum").or_insert(Value::from(u32::MAX));
                    }
                    Some("uint64") | Some("uint") => {
                        map.remove("format");
                    }
                    _ => {}
                }
            }
            for child in map.values_mut() {
                normalize_integers(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_integers),
        _ => {}
    }
}
