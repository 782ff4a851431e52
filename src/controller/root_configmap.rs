//! The trust bundle in every namespace: ConfigMap [`CONFIGMAP_NAME`] with key
//! [`ROOT_CERT_KEY`] holding the whole PEM bundle, labelled [`MANAGED_BY_LABEL`]` =
//! `[`MANAGED_BY`]. Pods mount it to verify the control plane and each other.
//!
//! While this replica leads, the reconciler watches the ConfigMaps of that name in all
//! namespaces (a field selector on `metadata.name`, so no other ConfigMap is ever held) and,
//! after every namespace, ConfigMap or bundle change, brings each namespace of the inventory
//! in line ([`plan`]): create what is missing (a new namespace, a deleted ConfigMap), replace
//! what differs (an edit, a new bundle), leave the rest alone. Replacements carry the observed
//! `resourceVersion`, so a concurrent edit makes the write fail (409) and the watch brings the
//! new state to judge again. Failed namespaces are retried with backoff; a namespace that is
//! being terminated refuses new objects, which is expected and only logged at debug level.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_stream::StreamExt as _;

use super::FIELD_MANAGER;
use super::inventory::Inventory;
use super::metrics::ReconcileMetrics;
use crate::ca::TrustBundle;

/// Name of the ConfigMap in every namespace (architecture.md).
pub const CONFIGMAP_NAME: &str = "palisade-ca-root-cert";
/// Its key: the whole bundle, concatenated PEM.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// The label that marks it as ours.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "palisade";
/// Writes in flight at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// First wait before retrying a namespace whose write failed; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait before retrying a namespace.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Wait before retrying a namespace that is being terminated (it should be gone by then).
pub const TERMINATING_RETRY: Duration = Duration::from_secs(30);

/// SHA-256 of a value: observed ConfigMaps are kept as digests, so a user who writes a large
/// ConfigMap of this name costs the controller 32 bytes.
pub type Digest = [u8; 32];

/// The SHA-256 of `text`.
pub fn digest(text: &str) -> Digest {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What the reconciler keeps of an observed ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `metadata.resourceVersion`, carried by a replacement.
    pub resource_version: Option<String>,
    /// Digest of `data[root-cert.pem]`, when present.
    pub root_cert: Option<Digest>,
    /// True when `data` has no other key and `binaryData` is empty.
    pub only_root_cert: bool,
    /// True when it carries [`MANAGED_BY_LABEL`]` = `[`MANAGED_BY`].
    pub labelled: bool,
}

impl Observed {
    /// Reduces a ConfigMap to what [`decide`] needs.
    pub fn of(cm: &ConfigMap) -> Self {
        let data = cm.data.as_ref();
        let other_keys = data.is_some_and(|d| d.keys().any(|k| k != ROOT_CERT_KEY))
            || cm.binary_data.as_ref().is_some_and(|b| !b.is_empty());
        Self {
            resource_version: cm.metadata.resource_version.clone(),
            root_cert: data.and_then(|d| d.get(ROOT_CERT_KEY)).map(|v| digest(v)),
            only_root_cert: !other_keys,
            labelled: cm
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY_LABEL))
                .is_some_and(|v| v == MANAGED_BY),
        }
    }
}

/// What to do in one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// No ConfigMap: create it.
    Create,
    /// It differs: replace it, conditional on this `resourceVersion`.
    Replace {
        /// The observed `resourceVersion` (`None`: unconditional).
        resource_version: Option<String>,
    },
}

/// The action for one namespace whose ConfigMap is `observed` (or absent), for a bundle whose
/// PEM has digest `bundle`; `None` when it is as it should be.
pub fn decide(observed: Option<&Observed>, bundle: &Digest) -> Option<Action> {
    match observed {
        None => Some(Action::Create),
        Some(o) if o.root_cert.as_ref() == Some(bundle) && o.only_root_cert && o.labelled => None,
        Some(o) => Some(Action::Replace {
            resource_version: o.resource_version.clone(),
        }),
    }
}

/// The actions that make every namespace in `namespaces` hold `bundle_pem` (none for an empty
/// bundle: an empty trust bundle is never distributed). ConfigMaps in namespaces that are not
/// listed are left alone.
pub fn plan<'a>(
    namespaces: impl IntoIterator<Item = &'a str>,
    observed: &BTreeMap<String, Observed>,
    bundle_pem: &str,
) -> Vec<(String, Action)> {
    if bundle_pem.is_empty() {
        return Vec::new();
    }
    let bundle = digest(bundle_pem);
    namespaces
        .into_iter()
        .filter_map(|ns| decide(observed.get(ns), &bundle).map(|a| (ns.to_string(), a)))
        .collect()
}

/// The ConfigMap as it should be in `namespace`.
pub fn desired(namespace: &str, bundle_pem: &str, resource_version: Option<String>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIGMAP_NAME.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY.to_string(),
            )])),
            resource_version,
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            ROOT_CERT_KEY.to_string(),
            bundle_pem.to_string(),
        )])),
        ..ConfigMap::default()
    }
}

/// How one write ended.
#[derive(Debug)]
pub enum WriteResult {
    /// Written; the API server's copy.
    Written(Box<ConfigMap>),
    /// 409: it appeared (create) or changed (replace) meanwhile; the watch brings it.
    Conflict,
    /// 404 on a replace: deleted meanwhile.
    NotFound,
    /// The namespace is being terminated and accepts no new objects.
    NamespaceTerminating,
    /// Anything else.
    Failed(kube::Error),
}

impl WriteResult {
    /// The `result` label of the write metric.
    pub fn label(&self) -> &'static str {
        match self {
            WriteResult::Written(_) => "ok",
            WriteResult::Conflict => "conflict",
            WriteResult::NotFound => "not_found",
            WriteResult::NamespaceTerminating => "namespace_terminating",
            WriteResult::Failed(_) => "error",
        }
    }
}

/// True for the API server's refusal to create objects in a namespace being deleted (403 with
/// cause `NamespaceTerminating`).
fn is_namespace_terminating(status: &kube::core::Status) -> bool {
    status.code == 403
        && status
            .details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
}

/// Performs one action in `namespace`.
pub async fn write(
    client: kube::Client,
    namespace: &str,
    action: &Action,
    bundle_pem: &str,
) -> WriteResult {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PostParams::default()
    };
    let result = match action {
        Action::Create => {
            api.create(&params, &desired(namespace, bundle_pem, None))
                .await
        }
        Action::Replace { resource_version } => {
            let cm = desired(namespace, bundle_pem, resource_version.clone());
            api.replace(CONFIGMAP_NAME, &params, &cm).await
        }
    };
    match result {
        Ok(cm) => WriteResult::Written(Box::new(cm)),
        Err(kube::Error::Api(s)) if s.code == 409 => WriteResult::Conflict,
        Err(kube::Error::Api(s)) if s.code == 404 => WriteResult::NotFound,
        Err(kube::Error::Api(s)) if is_namespace_terminating(&s) => {
            WriteResult::NamespaceTerminating
        }
        Err(e) => WriteResult::Failed(e),
    }
}

/// A namespace waiting for a retry.
struct Retry {
    backoff: Duration,
    not_before: Instant,
}

/// The ConfigMaps seen by the watch: the current set, and the one being re-listed.
#[derive(Default)]
struct Seen {
    current: BTreeMap<String, Observed>,
    relisting: Option<BTreeMap<String, Observed>>,
    synced: bool,
}

impl Seen {
    fn apply(&mut self, event: watcher::Event<ConfigMap>) {
        let namespace = |cm: &ConfigMap| cm.metadata.namespace.clone().unwrap_or_default();
        match event {
            watcher::Event::Init => self.relisting = Some(BTreeMap::new()),
            watcher::Event::InitApply(cm) => {
                if let Some(list) = self.relisting.as_mut() {
                    list.insert(namespace(&cm), Observed::of(&cm));
                }
            }
            watcher::Event::InitDone => {
                if let Some(list) = self.relisting.take() {
                    self.current = list;
                }
                self.synced = true;
            }
            watcher::Event::Apply(cm) => {
                self.current.insert(namespace(&cm), Observed::of(&cm));
            }
            watcher::Event::Delete(cm) => {
                self.current.remove(&namespace(&cm));
            }
        }
    }
}

/// The reconciler.
pub struct RootCertWriter {
    client: kube::Client,
    metrics: ReconcileMetrics,
}

impl RootCertWriter {
    /// A reconciler writing through `client`, counting in `metrics`.
    pub fn new(client: kube::Client, metrics: ReconcileMetrics) -> Self {
        Self { client, metrics }
    }

    /// Runs [`RootCertWriter::run`] while `leading` is `true` (the ConfigMap watch included);
    /// everything is dropped as soon as leadership is lost. Ends when a channel closes.
    pub fn spawn_while_leader(
        self,
        inventory: watch::Receiver<Arc<Inventory>>,
        bundles: watch::Receiver<TrustBundle>,
        leading: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(super::leader::while_leading(
            leading,
            "root-cert ConfigMaps",
            (self, inventory, bundles),
            |(writer, inventory, bundles)| Box::pin(writer.run(inventory, bundles)),
        ))
    }

    /// Watches the ConfigMaps and reconciles after every change (once the watch has listed
    /// them all); returns when the inventory or bundle channel closes.
    pub async fn run(
        &self,
        inventory: &mut watch::Receiver<Arc<Inventory>>,
        bundles: &mut watch::Receiver<TrustBundle>,
    ) {
        let all: Api<ConfigMap> = Api::all(self.client.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP_NAME}"));
        let mut events = Box::pin(watcher(all, config).default_backoff());
        let mut seen = Seen::default();
        let mut retries: HashMap<String, Retry> = HashMap::new();
        loop {
            if seen.synced {
                let snapshot = inventory.borrow_and_update().clone();
                let pem = bundles.borrow_and_update().to_pem();
                self.pass(&snapshot, &pem, &mut seen.current, &mut retries)
                    .await;
            }
            let wake = retries.values().map(|r| r.not_before).min();
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => seen.apply(event),
                    Some(Err(e)) => tracing::warn!(error = %e, "root-cert ConfigMap watch failed; retrying"),
                    None => return,
                },
                changed = inventory.changed() => if changed.is_err() { return },
                changed = bundles.changed() => if changed.is_err() { return },
                () = sleep_until(wake) => {}
            }
        }
    }

    /// One pass over the namespaces of `inventory`.
    async fn pass(
        &self,
        inventory: &Inventory,
        pem: &str,
        observed: &mut BTreeMap<String, Observed>,
        retries: &mut HashMap<String, Retry>,
    ) {
        let planned = plan(
            inventory.namespaces.keys().map(String::as_str),
            observed,
            pem,
        );
        // A namespace that needs nothing any more (or is gone) has nothing to retry.
        let wanted: HashSet<&str> = planned.iter().map(|(ns, _)| ns.as_str()).collect();
        retries.retain(|ns, _| wanted.contains(ns.as_str()));
        let now = Instant::now();
        let todo: Vec<(String, Action)> = planned
            .into_iter()
            .filter(|(ns, _)| retries.get(ns).is_none_or(|r| r.not_before <= now))
            .collect();
        let pem: Arc<str> = Arc::from(pem);
        let mut in_flight = JoinSet::new();
        let mut todo = todo.into_iter();
        loop {
            while in_flight.len() < MAX_IN_FLIGHT {
                let Some((ns, action)) = todo.next() else {
                    break;
                };
                let (client, pem) = (self.client.clone(), pem.clone());
                in_flight.spawn(async move {
                    let result = write(client, &ns, &action, &pem).await;
                    (ns, action, result)
                });
            }
            let Some(done) = in_flight.join_next().await else {
                break;
            };
            let Ok((ns, action, result)) = done else {
                continue;
            };
            let operation = match action {
                Action::Create => "create",
                Action::Replace { .. } => "replace",
            };
            self.metrics.configmap_write(operation, result.label());
            let retry_in = match result {
                WriteResult::Written(cm) => {
                    tracing::info!(namespace = %ns, operation, "root-cert ConfigMap written");
                    observed.insert(ns.clone(), Observed::of(&cm));
                    retries.remove(&ns);
                    continue;
                }
                WriteResult::NotFound => {
                    observed.remove(&ns);
                    Some(FIRST_BACKOFF)
                }
                WriteResult::Conflict => Some(FIRST_BACKOFF),
                WriteResult::NamespaceTerminating => {
                    tracing::debug!(namespace = %ns, "namespace is terminating; no root-cert ConfigMap");
                    Some(TERMINATING_RETRY)
                }
                WriteResult::Failed(e) => {
                    tracing::warn!(namespace = %ns, operation, error = %crate::error_chain(&e), "root-cert ConfigMap write failed; retrying");
                    None
                }
            };
            let previous = retries.get(&ns).map(|r| r.backoff);
            let backoff = retry_in.unwrap_or_else(|| match previous {
                Some(b) => (b * 2).min(MAX_BACKOFF),
                None => FIRST_BACKOFF,
            });
            retries.insert(
                ns,
                Retry {
                    backoff,
                    not_before: Instant::now() + backoff,
                },
            );
        }
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Starts the reconciler: ConfigMap [`CONFIGMAP_NAME`] with the bundle from `bundles` in every
/// namespace of `inventory`, through `client`, while `leading` is `true`. Ends when a channel
/// closes; abort the handle to stop it sooner.
pub fn spawn(
    client: kube::Client,
    inventory: watch::Receiver<Arc<Inventory>>,
    bundles: watch::Receiver<TrustBundle>,
    leading: watch::Receiver<bool>,
    metrics: ReconcileMetrics,
) -> JoinHandle<()> {
    RootCertWriter::new(client, metrics).spawn_while_leader(inventory, bundles, leading)
}

#[cfg(test)]
#[path = "root_configmap_tests.rs"]
mod tests;
