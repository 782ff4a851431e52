//! Status of PeerAuthentication, DestinationRule and AuthorizationPolicy objects: what the
//! engines found about each object, as conditions users read with `kubectl get pa,dr,ap` and
//! `kubectl describe`. (AuthorizationPolicy conditions come from
//! [`crate::policy::authz::authz_status`]; their transition times are kept here like the
//! others'.)
//!
//! [`policy_status`] is the pure rule (one object's findings, the status it carries, the time
//! -> the status it should carry); [`desired_statuses`] applies it to a whole [`Inventory`].
//! [`spawn`] runs the writer: on every inventory change, while this replica leads, it applies
//! with server-side apply (field manager [`FIELD_MANAGER`], forced, on the status subresource)
//! the statuses that differ from what the objects carry, a few at a time, retrying failures
//! with backoff.
//!
//! Conditions (always all four, in this order):
//!
//! | type | `True` when | reasons |
//! |---|---|---|
//! | `Accepted` | the object is in force (or will be when a matching workload appears) | `Accepted`; `False`: `OlderPolicyWins`, `RootNamespaceSelector`, `Invalid` |
//! | `Conflicted` | an older object overrides it, in whole or in part | `OlderPolicyWins`, `MergedIntoOlderRule`, `NotMerged`; `False`: `NoConflict` |
//! | `Unused` | it applies to nothing now | `RootNamespaceSelector`, `SelectsNothing`; `False`: `InUse` |
//! | `NotEnforced` | some fields are ignored or kept but not acted on | `InvalidFields`, `FieldsNotEnforced`; `False`: `AllEnforced` |

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::FIELD_MANAGER;
use super::inventory::{Inventory, ObjectKey};
use super::metrics::ReconcileMetrics;
use crate::api::{DestinationRule, PeerAuthentication, PolicyCondition, PolicyStatus};
use crate::policy::authz::{AuthzEngine, authz_status};
use crate::policy::{Diagnostic, DiagnosticKind, MeshConfig, ObjectRef, PolicyEngine, PolicyKind};

/// Condition type: the object is in force.
pub const ACCEPTED: &str = "Accepted";
/// Condition type: an older object overrides it, in whole or in part.
pub const CONFLICTED: &str = "Conflicted";
/// Condition type: it applies to nothing now.
pub const UNUSED: &str = "Unused";
/// Condition type: some of its fields are ignored or not acted on.
pub const NOT_ENFORCED: &str = "NotEnforced";

/// Longest condition message written; longer ones are cut (Kubernetes allows 32 KiB, but a
/// status is read by people).
pub const MAX_MESSAGE: usize = 2048;
/// Status writes in flight at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// A pass with nothing to do runs at least this often (repairs what no event reported).
pub const RESYNC: Duration = Duration::from_secs(300);
/// First wait after a failed write; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between retries of failed writes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a written status is trusted over the (older) one the inventory still shows, so the
/// same status is not written again before the watch delivers our own write.
const WRITTEN_TTL: Duration = Duration::from_secs(60);

/// The status one object should carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredStatus {
    /// Kind of the object.
    pub kind: PolicyKind,
    /// Its `namespace/name`.
    pub key: ObjectKey,
    /// The status it should carry.
    pub status: PolicyStatus,
    /// True when that differs from the status it carries now.
    pub changed: bool,
}

/// RFC 3339 at second precision, as Kubernetes writes `metav1.Time`.
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Joins messages with `; `, cut at [`MAX_MESSAGE`] bytes (on a character boundary).
fn joined<'a>(messages: impl IntoIterator<Item = &'a str>) -> String {
    let mut text = String::new();
    for m in messages {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(m);
    }
    if text.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - 3;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

fn messages_of<'a>(
    findings: &'a [&'a Diagnostic],
    pick: impl Fn(&DiagnosticKind) -> bool + 'a,
) -> impl Iterator<Item = &'a str> + 'a {
    findings
        .iter()
        .filter(move |d| pick(&d.kind))
        .map(|d| d.message.as_str())
}

/// The status of one object from its findings (as [`PolicyEngine::diagnostics`] reports them),
/// whether the engine [ignores](PolicyEngine::ignored) it, its `metadata.generation`, the
/// status it carries now and the time. A condition keeps its `lastTransitionTime` when its
/// status did not change; otherwise it is `now`.
pub fn policy_status(
    findings: &[&Diagnostic],
    ignored: bool,
    generation: Option<i64>,
    previous: Option<&PolicyStatus>,
    now: Timestamp,
) -> PolicyStatus {
    let has = |pick: fn(&DiagnosticKind) -> bool| findings.iter().any(|d| pick(&d.kind));
    let is_conflict = |k: &DiagnosticKind| matches!(k, DiagnosticKind::Conflict { .. });
    let is_merge = |k: &DiagnosticKind| matches!(k, DiagnosticKind::MergeDropped { .. });
    let is_not_merged = |k: &DiagnosticKind| matches!(k, DiagnosticKind::NotMerged { .. });
    let is_root = |k: &DiagnosticKind| matches!(k, DiagnosticKind::RootNamespaceSelector);
    let is_nothing = |k: &DiagnosticKind| matches!(k, DiagnosticKind::SelectsNothing);
    let is_invalid = |k: &DiagnosticKind| matches!(k, DiagnosticKind::Invalid { .. });
    let is_not_enforced = |k: &DiagnosticKind| matches!(k, DiagnosticKind::NotEnforced { .. });

    let accepted = if !ignored {
        ("True", "Accepted", "The policy is in force".to_string())
    } else if has(is_root) {
        (
            "False",
            "RootNamespaceSelector",
            joined(messages_of(findings, is_root)),
        )
    } else if has(is_conflict) {
        (
            "False",
            "OlderPolicyWins",
            joined(messages_of(findings, is_conflict)),
        )
    } else if has(is_invalid) {
        (
            "False",
            "Invalid",
            joined(messages_of(findings, is_invalid)),
        )
    } else {
        (
            "False",
            "Ignored",
            "The policy takes effect nowhere".to_string(),
        )
    };
    let conflicted = if has(is_conflict) || has(is_merge) || has(is_not_merged) {
        let reason = if has(is_conflict) {
            "OlderPolicyWins"
        } else if has(is_merge) {
            "MergedIntoOlderRule"
        } else {
            "NotMerged"
        };
        let any = |k: &DiagnosticKind| is_conflict(k) || is_merge(k) || is_not_merged(k);
        ("True", reason, joined(messages_of(findings, any)))
    } else {
        (
            "False",
            "NoConflict",
            "No older policy overrides this one".to_string(),
        )
    };
    let unused = if has(is_root) {
        (
            "True",
            "RootNamespaceSelector",
            joined(messages_of(findings, is_root)),
        )
    } else if has(is_nothing) {
        (
            "True",
            "SelectsNothing",
            joined(messages_of(findings, is_nothing)),
        )
    } else {
        (
            "False",
            "InUse",
            "Nothing shows the policy applies to nothing".to_string(),
        )
    };
    let not_enforced = if has(is_invalid) || has(is_not_enforced) {
        let reason = if has(is_invalid) {
            "InvalidFields"
        } else {
            "FieldsNotEnforced"
        };
        let any = |k: &DiagnosticKind| is_invalid(k) || is_not_enforced(k);
        ("True", reason, joined(messages_of(findings, any)))
    } else {
        (
            "False",
            "AllEnforced",
            "Every field is enforced".to_string(),
        )
    };

    let transition = |type_: &str, status: &str| -> String {
        previous
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| rfc3339(now))
    };
    let conditions = [
        (ACCEPTED, accepted),
        (CONFLICTED, conflicted),
        (UNUSED, unused),
        (NOT_ENFORCED, not_enforced),
    ]
    .into_iter()
    .map(|(type_, (status, reason, message))| PolicyCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: Some(transition(type_, status)),
        observed_generation: generation,
    })
    .collect();
    PolicyStatus {
        conditions,
        observed_generation: generation,
    }
}

/// The engine's findings, by object.
pub fn findings_by_object(engine: &PolicyEngine) -> BTreeMap<&ObjectRef, Vec<&Diagnostic>> {
    let mut by_object: BTreeMap<&ObjectRef, Vec<&Diagnostic>> = BTreeMap::new();
    for d in engine.diagnostics() {
        by_object.entry(&d.object).or_default().push(d);
    }
    by_object
}

fn object_ref(kind: PolicyKind, key: &ObjectKey) -> ObjectRef {
    ObjectRef {
        kind,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    }
}

/// `status` with each condition's `lastTransitionTime` kept from `previous` when that condition
/// has the same status there, else `now`.
pub fn with_transitions(
    mut status: PolicyStatus,
    previous: Option<&PolicyStatus>,
    now: Timestamp,
) -> PolicyStatus {
    for c in &mut status.conditions {
        c.last_transition_time = previous
            .and_then(|p| p.conditions.iter().find(|old| old.type_ == c.type_))
            .filter(|old| old.status == c.status)
            .and_then(|old| old.last_transition_time.clone())
            .or_else(|| Some(rfc3339(now)));
    }
    status
}

/// Every policy object of an inventory: kind, key, generation and the status it carries, in
/// the order statuses are judged and written (PeerAuthentications, DestinationRules, then
/// AuthorizationPolicies, each kind in `namespace/name` order).
fn objects(
    inventory: &Inventory,
) -> impl Iterator<Item = (PolicyKind, &ObjectKey, Option<i64>, Option<&PolicyStatus>)> {
    let pas = inventory.peer_authentications.iter().map(|(k, r)| {
        let status = r.status.as_ref();
        (PolicyKind::PeerAuthentication, k, r.generation, status)
    });
    let drs = inventory.destination_rules.iter().map(|(k, r)| {
        let status = r.status.as_ref();
        (PolicyKind::DestinationRule, k, r.generation, status)
    });
    let aps = inventory.authorization_policies.iter().map(|(k, r)| {
        let status = r.status.as_ref();
        (PolicyKind::AuthorizationPolicy, k, r.generation, status)
    });
    pas.chain(drs).chain(aps)
}

/// What the engines found about every object of one inventory, ready to judge statuses.
struct Judge<'e> {
    engine: &'e PolicyEngine,
    findings: BTreeMap<&'e ObjectRef, Vec<&'e Diagnostic>>,
    /// AuthorizationPolicy statuses before transition times.
    authz: HashMap<ObjectKey, PolicyStatus>,
}

impl<'e> Judge<'e> {
    /// `engine` must have been built from `inventory.mesh_input(..)`.
    fn new(inventory: &Inventory, engine: &'e PolicyEngine) -> Self {
        let authz_engine = AuthzEngine::new(engine.config(), &inventory.authz_policies());
        let active = inventory.pods.values().filter(|p| p.active);
        let counts = authz_engine.workload_counts(active.map(|p| &p.workload));
        let authz = authz_engine
            .policies()
            .zip(counts)
            .map(|(p, count)| {
                let key = ObjectKey::new(&p.object.namespace, &p.object.name);
                let generation = inventory
                    .authorization_policies
                    .get(&key)
                    .and_then(|r| r.generation);
                (key, authz_status(p, Some(count), generation))
            })
            .collect();
        Judge {
            engine,
            findings: findings_by_object(engine),
            authz,
        }
    }

    /// The status object `key` of `kind` should carry, judged over `base` (what it carries).
    fn desired(
        &self,
        kind: PolicyKind,
        key: &ObjectKey,
        generation: Option<i64>,
        base: Option<&PolicyStatus>,
        now: Timestamp,
    ) -> PolicyStatus {
        if kind == PolicyKind::AuthorizationPolicy {
            let raw = self.authz.get(key).cloned().unwrap_or_default();
            return with_transitions(raw, base, now);
        }
        let object = object_ref(kind, key);
        let found = self
            .findings
            .get(&object)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let ignored = self.engine.ignored().contains(&object);
        policy_status(found, ignored, generation, base, now)
    }
}

/// Every PeerAuthentication, DestinationRule and AuthorizationPolicy of `inventory` (in that
/// order, each kind in `namespace/name` order) with the status it should carry, judged against
/// the status it carries now. `engine` must have been built from `inventory.mesh_input(..)`.
pub fn desired_statuses(
    inventory: &Inventory,
    engine: &PolicyEngine,
    now: Timestamp,
) -> Vec<DesiredStatus> {
    let judge = Judge::new(inventory, engine);
    objects(inventory)
        .map(|(kind, key, generation, current)| {
            let status = judge.desired(kind, key, generation, current, now);
            let current = current.cloned();
            DesiredStatus {
                kind,
                key: key.clone(),
                changed: current.as_ref() != Some(&status),
                status,
            }
        })
        .collect()
}

/// The server-side apply body for `status` of `K` `key`.
pub fn apply_body<K: Resource<DynamicType = ()>>(
    key: &ObjectKey,
    status: &PolicyStatus,
) -> serde_json::Value {
    json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": key.name, "namespace": key.namespace},
        "status": status,
    })
}

/// What one write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The status was applied.
    Applied,
    /// The object is gone (deleted after the snapshot): nothing to do.
    NotFound,
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The API server refused or could not be reached.
    #[error("status of {kind} {key}: {source}")]
    Api {
        kind: &'static str,
        key: ObjectKey,
        #[source]
        source: kube::Error,
    },
}

async fn apply_as<K>(
    client: kube::Client,
    key: &ObjectKey,
    status: &PolicyStatus,
) -> Result<WriteOutcome, kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client, &key.namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api
        .patch_status(
            &key.name,
            &params,
            &Patch::Apply(apply_body::<K>(key, status)),
        )
        .await
    {
        Ok(_) => Ok(WriteOutcome::Applied),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(WriteOutcome::NotFound),
        Err(e) => Err(e),
    }
}

/// Applies `status` to the status subresource of one object (server-side apply, forced, field
/// manager [`FIELD_MANAGER`]). A deleted object is [`WriteOutcome::NotFound`], not an error.
pub async fn apply_status(
    client: kube::Client,
    kind: PolicyKind,
    key: &ObjectKey,
    status: &PolicyStatus,
) -> Result<WriteOutcome, StatusError> {
    let result = match kind {
        PolicyKind::PeerAuthentication => apply_as::<PeerAuthentication>(client, key, status).await,
        PolicyKind::DestinationRule => apply_as::<DestinationRule>(client, key, status).await,
        PolicyKind::AuthorizationPolicy => {
            apply_as::<crate::api::AuthorizationPolicy>(client, key, status).await
        }
    };
    result.map_err(|source| StatusError::Api {
        kind: kind.as_str(),
        key: key.clone(),
        source,
    })
}

/// A status this replica wrote, and the one the inventory showed when it did.
struct Written {
    seen: Option<PolicyStatus>,
    written: PolicyStatus,
    at: Instant,
}

/// The writer: computes and applies statuses while this replica leads.
pub struct StatusWriter {
    client: kube::Client,
    config: MeshConfig,
    metrics: ReconcileMetrics,
    clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
}

impl StatusWriter {
    /// A writer through `client`, resolving with `config`, counting in `metrics`.
    pub fn new(client: kube::Client, config: MeshConfig, metrics: ReconcileMetrics) -> Self {
        Self {
            client,
            config,
            metrics,
            clock: Arc::new(Timestamp::now),
        }
    }

    /// The same writer reading the time from `clock` (tests pin it).
    pub fn with_clock(mut self, clock: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Runs [`StatusWriter::run`] while `leading` is `true`: a pass as soon as leadership is
    /// gained; dropped (writes in flight included) as soon as it is lost. Ends when either
    /// channel closes.
    pub fn spawn_while_leader(
        self,
        inventory: watch::Receiver<Arc<Inventory>>,
        leading: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(super::leader::while_leading(
            leading,
            "status writes",
            (self, inventory),
            |(writer, inventory)| Box::pin(writer.run(inventory)),
        ))
    }

    /// Passes on every inventory change, after failures (with backoff) and every [`RESYNC`];
    /// returns when the inventory channel closes.
    pub async fn run(&self, inventory: &mut watch::Receiver<Arc<Inventory>>) {
        // Fresh each term: another leader may have written meanwhile.
        let mut written: HashMap<(PolicyKind, ObjectKey), Written> = HashMap::new();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let snapshot = inventory.borrow_and_update().clone();
            let failures = self.pass(&snapshot, &mut written).await;
            let wait = if failures > 0 {
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                tracing::warn!(failures, retry_in = ?wait, "some status writes failed; retrying");
                wait
            } else {
                backoff = FIRST_BACKOFF;
                RESYNC
            };
            tokio::select! {
                changed = inventory.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass: writes every status that differs; returns how many writes failed.
    async fn pass(
        &self,
        inventory: &Inventory,
        written: &mut HashMap<(PolicyKind, ObjectKey), Written>,
    ) -> usize {
        let engine = PolicyEngine::new(inventory.mesh_input(&self.config));
        let judge = Judge::new(inventory, &engine);
        let now = (self.clock)();
        let current =
            |kind: PolicyKind, key: &ObjectKey| -> Option<(Option<i64>, Option<PolicyStatus>)> {
                match kind {
                    PolicyKind::PeerAuthentication => inventory
                        .peer_authentications
                        .get(key)
                        .map(|r| (r.generation, r.status.clone())),
                    PolicyKind::DestinationRule => inventory
                        .destination_rules
                        .get(key)
                        .map(|r| (r.generation, r.status.clone())),
                    PolicyKind::AuthorizationPolicy => inventory
                        .authorization_policies
                        .get(key)
                        .map(|r| (r.generation, r.status.clone())),
                }
            };
        // Forget what the inventory has caught up with, what is gone, and what is too old.
        written.retain(|(kind, key), w| {
            current(*kind, key).is_some_and(|(_, status)| status == w.seen)
                && w.at.elapsed() < WRITTEN_TTL
        });
        let mut todo = Vec::new();
        for (kind, key, generation, status) in objects(inventory) {
            let base = match written.get(&(kind, key.clone())) {
                Some(w) => Some(&w.written),
                None => status,
            };
            let desired = judge.desired(kind, key, generation, base, now);
            if base != Some(&desired) {
                todo.push((kind, key.clone(), status.cloned(), desired));
            }
        }
        let mut failures = 0;
        let mut in_flight = JoinSet::new();
        let mut todo = todo.into_iter();
        loop {
            while in_flight.len() < MAX_IN_FLIGHT {
                let Some((kind, key, seen, desired)) = todo.next() else {
                    break;
                };
                let client = self.client.clone();
                in_flight.spawn(async move {
                    let result = apply_status(client, kind, &key, &desired).await;
                    (kind, key, seen, desired, result)
                });
            }
            let Some(joined) = in_flight.join_next().await else {
                break;
            };
            let Ok((kind, key, seen, desired, result)) = joined else {
                failures += 1;
                continue;
            };
            match result {
                Ok(WriteOutcome::Applied) => {
                    self.metrics.status_write(kind.as_str(), "applied");
                    tracing::debug!(kind = kind.as_str(), %key, "status applied");
                    written.insert(
                        (kind, key),
                        Written {
                            seen,
                            written: desired,
                            at: Instant::now(),
                        },
                    );
                }
                Ok(WriteOutcome::NotFound) => {
                    self.metrics.status_write(kind.as_str(), "not_found");
                    tracing::debug!(kind = kind.as_str(), %key, "object gone before its status was written");
                }
                Err(e) => {
                    self.metrics.status_write(kind.as_str(), "error");
                    tracing::warn!(error = %crate::error_chain(&e), "status write failed");
                    failures += 1;
                }
            }
        }
        failures
    }
}

/// Starts the status writer: statuses of every PeerAuthentication, DestinationRule and
/// AuthorizationPolicy in
/// `inventory`, written through `client` while `leading` is `true`. Ends when either channel
/// closes; abort the handle to stop it sooner.
pub fn spawn(
    client: kube::Client,
    inventory: watch::Receiver<Arc<Inventory>>,
    config: MeshConfig,
    leading: watch::Receiver<bool>,
    metrics: ReconcileMetrics,
) -> JoinHandle<()> {
    StatusWriter::new(client, config, metrics).spawn_while_leader(inventory, leading)
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "status_writer_tests.rs"]
mod writer_tests;
