//! Keeps `webhooks[].clientConfig.caBundle` of the MutatingWebhookConfiguration
//! `palisade-sidecar-injector` equal to the trust bundle, so the API server trusts the
//! webhook's serving certificate across CA rotations (and after a `helm upgrade` resets it).
//!
//! One GET per check; a PATCH only when some webhook's bundle differs. The patch is an RFC 6902
//! JSON Patch that touches nothing but the `caBundle` fields, each guarded by a `test` of the
//! webhook's name, so a concurrent reordering makes the PATCH fail instead of writing the
//! bundle into the wrong entry.

use std::time::Duration;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, TestOperation};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::watch;

use crate::ca::TrustBundle;

/// Name of the webhook configuration (architecture.md; the Helm chart creates it).
pub const WEBHOOK_CONFIGURATION: &str = "palisade-sidecar-injector";
/// Field manager recorded on our writes.
pub const FIELD_MANAGER: &str = "palisade-controller";
/// How often the bundle is re-checked without a change (repairs drift).
pub const RESYNC: Duration = Duration::from_secs(60);
/// Wait after a failed check.
const RETRY: Duration = Duration::from_secs(10);

/// What a check did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every webhook already had the bundle.
    Unchanged,
    /// This many webhooks were updated.
    Updated(usize),
    /// The configuration does not exist (not installed yet); nothing to do.
    NotFound,
}

/// The adapter: reads and patches one MutatingWebhookConfiguration.
pub struct CaBundleSync {
    api: Api<MutatingWebhookConfiguration>,
    name: String,
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

/// The operations that make every webhook of `config` carry `bundle_pem` (empty when none is
/// needed).
pub fn patch_for(config: &MutatingWebhookConfiguration, bundle_pem: &str) -> Vec<PatchOperation> {
    let want = ByteString(bundle_pem.as_bytes().to_vec());
    let mut ops = Vec::new();
    for (i, webhook) in config.webhooks.iter().flatten().enumerate() {
        if webhook.client_config.ca_bundle.as_ref() == Some(&want) {
            continue;
        }
        let index = i.to_string();
        ops.push(PatchOperation::Test(TestOperation {
            path: pointer(&["webhooks", &index, "name"]),
            value: serde_json::Value::String(webhook.name.clone()),
        }));
        // `add` sets the member whether or not it exists; ByteString serializes as base64.
        ops.push(PatchOperation::Add(AddOperation {
            path: pointer(&["webhooks", &index, "clientConfig", "caBundle"]),
            value: serde_json::to_value(&want).unwrap_or_default(),
        }));
    }
    ops
}

impl CaBundleSync {
    /// Manages `palisade-sidecar-injector` through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: Api::all(client),
            name: WEBHOOK_CONFIGURATION.into(),
        }
    }

    /// Brings the configuration in line with `bundle_pem`.
    pub async fn reconcile(&self, bundle_pem: &str) -> Result<Outcome, kube::Error> {
        let Some(config) = self.api.get_opt(&self.name).await? else {
            return Ok(Outcome::NotFound);
        };
        let ops = patch_for(&config, bundle_pem);
        if ops.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        let updated = ops.len() / 2;
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        self.api
            .patch(
                &self.name,
                &params,
                &Patch::Json::<()>(json_patch::Patch(ops)),
            )
            .await?;
        Ok(Outcome::Updated(updated))
    }

    /// Checks now, on every trust-bundle change, and every [`RESYNC`]; errors are logged and
    /// retried. Abort the task to stop.
    pub fn spawn(self, mut bundles: watch::Receiver<TrustBundle>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run(&mut bundles).await })
    }

    /// [`spawn`](Self::spawn), but checking only while `leader` is `true`: the loop starts
    /// (with a check right away) when leadership is gained and is dropped as soon as it is
    /// lost. Ends when either channel closes.
    pub fn spawn_while_leader(
        self,
        bundles: watch::Receiver<TrustBundle>,
        leader: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(crate::controller::leader::while_leading(
            leader,
            "webhook caBundle sync",
            (self, bundles),
            |(writer, bundles)| Box::pin(writer.run(bundles)),
        ))
    }

    /// The loop behind [`spawn`](Self::spawn); returns when the bundle channel closes.
    async fn run(&self, bundles: &mut watch::Receiver<TrustBundle>) {
        loop {
            let pem = bundles.borrow_and_update().to_pem();
            let wait = match self.reconcile(&pem).await {
                Ok(Outcome::Updated(n)) => {
                    tracing::info!(webhooks = n, "updated the webhook caBundle");
                    RESYNC
                }
                Ok(Outcome::NotFound) => {
                    tracing::debug!(name = %self.name, "webhook configuration not found");
                    RESYNC
                }
                Ok(Outcome::Unchanged) => RESYNC,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook caBundle check failed; retrying");
                    RETRY
                }
            };
            tokio::select! {
                changed = bundles.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
#[path = "ca_bundle_tests.rs"]
mod tests;
