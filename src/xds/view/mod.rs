//! What each proxy sees: every active pod's [`ProxyView`] computed from one [`Inventory`]
//! snapshot with the policy engine, sharing what proxies have in common.
//!
//! Sharing (so a proxy costs the controller little more than its channel):
//! - one `Workload` set and one `TrustBundle` for every proxy;
//! - one `Destination` set per client class: a namespace plus the set of `workloadSelector`
//!   DestinationRules that select the client (only those rules make two clients of one
//!   namespace see different TLS); classes whose content is equal share one `Arc`;
//! - one `InboundPolicy` per distinct (decision, identity);
//! - one `AuthorizationPolicy` set per distinct set of applying policies.
//!
//! Reuse across snapshots: [`MeshViews::compute`] takes the previous result. An unchanged
//! inventory (`Arc::ptr_eq`) reuses everything but the trust bundle; Destinations are rebuilt
//! only when Services, endpoints, DestinationRules, pods, or the client-visible inbound facts
//! of meshed pods (DISABLE or not, per port) changed, so a PeerAuthentication that switches
//! pods between PERMISSIVE and STRICT rebuilds only `InboundPolicy`s. Every rebuilt resource
//! set whose version equals the previous one is replaced by the previous `Arc`, so an
//! unchanged view stays pointer-equal and nothing is pushed for it.

pub mod resources;

#[cfg(test)]
mod authz_tests;
#[cfg(test)]
pub(crate) mod fixture;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::api::MtlsMode;
use crate::ca::TrustBundle;
use crate::controller::inventory::{Inventory, ObjectKey};
use crate::policy::authz::AuthzEngine;
use crate::policy::{Client, MeshConfig, OutboundDecision, PolicyEngine};
use crate::xds::views::{
    AUTHORIZATION_POLICY_TYPE, DESTINATION_TYPE, INBOUND_POLICY_TYPE, ProxyView, TRUST_BUNDLE_TYPE,
    TypedResources, WORKLOAD_TYPE,
};

use resources::{EndpointPods, PodFacts};

/// A client class: the namespace and the `workloadSelector` DestinationRules (by key) that
/// select the client. Clients of one class see the same Destinations.
pub type ClassKey = (String, Vec<ObjectKey>);

/// Every active pod's view for one inventory and trust bundle, plus what the next
/// computation may reuse.
#[derive(Debug)]
pub struct MeshViews {
    config: MeshConfig,
    inventory: Arc<Inventory>,
    bundle: TrustBundle,
    trust_bundle: Arc<TypedResources>,
    workloads: Arc<TypedResources>,
    /// SHA-256 over the client-visible inbound facts of every meshed pod.
    endpoint_facts: Vec<u8>,
    classes: HashMap<ClassKey, Arc<TypedResources>>,
    /// InboundPolicy sets by version.
    inbound: HashMap<String, Arc<TypedResources>>,
    /// AuthorizationPolicy sets by version.
    authz: HashMap<String, Arc<TypedResources>>,
    /// Every AuthorizationPolicy, compiled (kept while the policies do not change).
    authz_engine: Arc<AuthzEngine>,
    views: HashMap<ObjectKey, Arc<ProxyView>>,
}

/// Two snapshots' maps hold the same records (by pointer, else by value).
fn same_records<K: Eq, V: PartialEq>(a: &BTreeMap<K, Arc<V>>, b: &BTreeMap<K, Arc<V>>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && (Arc::ptr_eq(va, vb) || va == vb))
}

/// The previous `Arc` when its version is equal (so unchanged content stays pointer-equal).
fn reuse(previous: Option<&Arc<TypedResources>>, new: TypedResources) -> Arc<TypedResources> {
    match previous {
        Some(p) if p.version == new.version => p.clone(),
        _ => Arc::new(new),
    }
}

impl MeshViews {
    /// Computes every active pod's view, reusing from `previous` whatever the change cannot
    /// have affected (see the module documentation).
    pub fn compute(
        inventory: Arc<Inventory>,
        bundle: &TrustBundle,
        config: &MeshConfig,
        previous: Option<&MeshViews>,
    ) -> MeshViews {
        let previous = previous.filter(|p| p.config == *config);
        let trust_bundle = match previous {
            Some(p) if p.bundle == *bundle => p.trust_bundle.clone(),
            _ => reuse(
                previous.map(|p| &p.trust_bundle),
                resources::typed(TRUST_BUNDLE_TYPE, &[resources::trust_bundle(bundle)]),
            ),
        };
        if let Some(p) = previous.filter(|p| Arc::ptr_eq(&p.inventory, &inventory)) {
            let views = p
                .views
                .iter()
                .map(|(key, view)| {
                    let view = if Arc::ptr_eq(&view.trust_bundle, &trust_bundle) {
                        view.clone()
                    } else {
                        Arc::new(ProxyView {
                            trust_bundle: trust_bundle.clone(),
                            ..(**view).clone()
                        })
                    };
                    (key.clone(), view)
                })
                .collect();
            return MeshViews {
                config: config.clone(),
                inventory,
                bundle: bundle.clone(),
                trust_bundle,
                workloads: p.workloads.clone(),
                endpoint_facts: p.endpoint_facts.clone(),
                classes: p.classes.clone(),
                inbound: p.inbound.clone(),
                authz: p.authz.clone(),
                authz_engine: p.authz_engine.clone(),
                views,
            };
        }
        Self::compute_full(inventory, bundle, config, previous, trust_bundle)
    }

    fn compute_full(
        inventory: Arc<Inventory>,
        bundle: &TrustBundle,
        config: &MeshConfig,
        previous: Option<&MeshViews>,
        trust_bundle: Arc<TypedResources>,
    ) -> MeshViews {
        let engine = PolicyEngine::new(inventory.mesh_input(config));
        let resolution = engine.resolve_all();
        let td = &config.trust_domain;

        // Inbound decisions come in mesh_input order: the active pods, by key.
        let mut pods = EndpointPods::default();
        let mut workload_messages = Vec::new();
        let mut facts = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let active = inventory.pods.iter().filter(|(_, p)| p.active);
        for ((key, pod), inbound) in active.zip(&resolution.inbound) {
            if *inbound.namespace != *key.namespace || *inbound.workload != *key.name {
                // Cannot happen (same input, same order); a pod without a decision gets no view.
                tracing::error!(pod = %key, "view computation: inbound decisions out of order");
                continue;
            }
            let meshed = pod.workload.is_meshed();
            if let Some(w) = resources::workload(pod, &inbound.decision, td) {
                workload_messages.push(w);
            }
            if meshed {
                facts.update(key.to_string().as_bytes());
                facts.update(&[0, u8::from(inbound.decision.mode == MtlsMode::Disable)]);
                for (port, mode) in &inbound.decision.port_modes {
                    facts.update(&port.to_le_bytes());
                    facts.update(&[u8::from(*mode == MtlsMode::Disable)]);
                }
            }
            for ip in &pod.ips {
                pods.by_ip.entry(*ip).or_insert_with(|| key.clone());
            }
            pods.by_key.insert(
                key.clone(),
                PodFacts {
                    meshed,
                    identity: resources::pod_identity(pod, td),
                    inbound: inbound.decision.clone(),
                },
            );
        }
        let endpoint_facts = facts.finish().as_ref().to_vec();
        let workloads = reuse(
            previous.map(|p| &p.workloads),
            resources::typed(WORKLOAD_TYPE, &workload_messages),
        );

        let destinations_unchanged = previous.is_some_and(|p| {
            p.endpoint_facts == endpoint_facts
                && same_records(&p.inventory.services, &inventory.services)
                && same_records(&p.inventory.endpoints, &inventory.endpoints)
                && same_records(&p.inventory.destination_rules, &inventory.destination_rules)
                && same_records(&p.inventory.pods, &inventory.pods)
        });
        let mut classes = match previous {
            Some(p) if destinations_unchanged => p.classes.clone(),
            _ => HashMap::new(),
        };
        let mut builder = DestinationBuilder {
            inventory: &inventory,
            engine: &engine,
            pods: &pods,
            config,
            default_decisions: default_decisions(&resolution.outbound),
            memo: HashMap::new(),
            by_version: HashMap::new(),
        };
        let selector_rules = selector_rules(&inventory);
        let authz_engine = match previous {
            Some(p)
                if same_records(
                    &p.inventory.authorization_policies,
                    &inventory.authorization_policies,
                ) =>
            {
                p.authz_engine.clone()
            }
            _ => Arc::new(AuthzEngine::new(config, &inventory.authz_policies())),
        };
        let mut authz = AuthzSets::new(authz_engine.clone(), previous.map(|p| &p.authz));

        let mut inbound_sets: HashMap<String, Arc<TypedResources>> = HashMap::new();
        let mut inbound_memo: HashMap<(usize, &str), Arc<TypedResources>> = HashMap::new();
        let mut views = HashMap::with_capacity(pods.by_key.len());
        for (key, facts) in &pods.by_key {
            let Some(pod) = inventory.pods.get(key) else {
                continue;
            };
            let inbound = inbound_memo
                .entry((
                    Arc::as_ptr(&facts.inbound) as usize,
                    facts.identity.as_str(),
                ))
                .or_insert_with(|| {
                    let set = resources::typed(
                        INBOUND_POLICY_TYPE,
                        &[resources::inbound_policy(&facts.inbound, &facts.identity)],
                    );
                    let found = inbound_sets
                        .get(&set.version)
                        .or_else(|| previous.and_then(|p| p.inbound.get(&set.version)));
                    let set = reuse(found, set);
                    inbound_sets.insert(set.version.clone(), set.clone());
                    set
                })
                .clone();
            let class: ClassKey = (
                key.namespace.clone(),
                selector_rules
                    .get(key.namespace.as_str())
                    .map(|rules| {
                        rules
                            .iter()
                            .filter(|(_, sel)| sel.matches(&pod.workload.labels))
                            .map(|(k, _)| (*k).clone())
                            .collect()
                    })
                    .unwrap_or_default(),
            );
            let destinations = match classes.get(&class) {
                Some(d) => d.clone(),
                None => {
                    let built = builder.class(&class, &pod.workload.labels);
                    let set = reuse(previous.and_then(|p| p.classes.get(&class)), built);
                    let set = builder.intern(set);
                    classes.insert(class, set.clone());
                    set
                }
            };
            let view = ProxyView {
                inbound,
                destinations,
                workloads: workloads.clone(),
                trust_bundle: trust_bundle.clone(),
                authorization: authz.for_pod(&key.namespace, &pod.workload.labels),
            };
            let view = match previous.and_then(|p| p.views.get(key)) {
                Some(old) if same_view(old, &view) => old.clone(),
                _ => Arc::new(view),
            };
            views.insert(key.clone(), view);
        }
        // Drop classes no pod is in any more (their Arcs would otherwise pile up).
        let used: std::collections::HashSet<*const TypedResources> = views
            .values()
            .map(|v| Arc::as_ptr(&v.destinations))
            .collect();
        classes.retain(|_, set| used.contains(&Arc::as_ptr(set)));

        MeshViews {
            config: config.clone(),
            inventory,
            bundle: bundle.clone(),
            trust_bundle,
            workloads,
            endpoint_facts,
            classes,
            inbound: inbound_sets,
            authz: authz.by_version,
            authz_engine,
            views,
        }
    }

    /// The view of an active pod.
    pub fn view(&self, pod: &ObjectKey) -> Option<&Arc<ProxyView>> {
        self.views.get(pod)
    }

    /// The inventory these views were computed from.
    pub fn inventory(&self) -> &Arc<Inventory> {
        &self.inventory
    }

    /// How many distinct Destination sets (client classes with distinct content) exist.
    pub fn distinct_destination_sets(&self) -> usize {
        let sets: std::collections::HashSet<*const TypedResources> =
            self.classes.values().map(Arc::as_ptr).collect();
        sets.len()
    }
}

/// True when two views hold the same content (by pointer, else by version).
pub fn same_view(a: &ProxyView, b: &ProxyView) -> bool {
    fn same(a: &Arc<TypedResources>, b: &Arc<TypedResources>) -> bool {
        Arc::ptr_eq(a, b) || a.version == b.version
    }
    same(&a.inbound, &b.inbound)
        && same(&a.destinations, &b.destinations)
        && same(&a.workloads, &b.workloads)
        && same(&a.trust_bundle, &b.trust_bundle)
        && same(&a.authorization, &b.authorization)
}

/// The AuthorizationPolicy sets of one computation: the engine (compiled once, and reused by
/// later computations while the policies do not change) selects each pod's policies, each policy
/// is encoded once when a pod first needs it, and pods to which the same policies apply share one
/// set.
struct AuthzSets<'p> {
    engine: Arc<AuthzEngine>,
    encoded: Vec<Option<Option<Any>>>,
    by_policies: HashMap<Vec<usize>, Arc<TypedResources>>,
    by_version: HashMap<String, Arc<TypedResources>>,
    previous: Option<&'p HashMap<String, Arc<TypedResources>>>,
}

impl<'p> AuthzSets<'p> {
    fn new(
        engine: Arc<AuthzEngine>,
        previous: Option<&'p HashMap<String, Arc<TypedResources>>>,
    ) -> Self {
        let count = engine.policies().count();
        AuthzSets {
            engine,
            encoded: vec![None; count],
            by_policies: HashMap::new(),
            by_version: HashMap::new(),
            previous,
        }
    }

    /// The set of a pod of `namespace` with `labels`.
    fn for_pod(
        &mut self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Arc<TypedResources> {
        let applying = self.engine.applying(namespace, labels);
        if let Some(set) = self.by_policies.get(&applying) {
            return set.clone();
        }
        let mut resources = Vec::with_capacity(applying.len());
        for &i in &applying {
            let slot = &mut self.encoded[i];
            if slot.is_none() {
                let policy = self.engine.policy(i);
                *slot = Some(
                    policy
                        .and_then(crate::policy::authz::wire::to_wire)
                        .map(|m| Any {
                            type_url: AUTHORIZATION_POLICY_TYPE.to_string(),
                            value: m.encode_to_vec(),
                        }),
                );
            }
            if let Some(Some(any)) = slot {
                resources.push(any.clone());
            }
        }
        let set = resources::typed_from_any(resources);
        let found = self
            .by_version
            .get(&set.version)
            .or_else(|| self.previous.and_then(|p| p.get(&set.version)));
        let set = reuse(found, set);
        self.by_version.insert(set.version.clone(), set.clone());
        self.by_policies.insert(applying, set.clone());
        set
    }
}

/// `workloadSelector` DestinationRules by namespace (only they split a namespace's clients).
fn selector_rules(
    inventory: &Inventory,
) -> HashMap<&str, Vec<(&ObjectKey, &crate::api::WorkloadSelector)>> {
    let mut out: HashMap<&str, Vec<_>> = HashMap::new();
    for (key, rule) in &inventory.destination_rules {
        if let Some(selector) = &rule.policy.spec.workload_selector {
            out.entry(key.namespace.as_str())
                .or_default()
                .push((key, selector));
        }
    }
    out
}

/// The whole-mesh outbound decisions (clients without labels) by (client namespace, service
/// namespace, service name, port).
type DefaultDecisions<'r> = HashMap<(&'r str, &'r str, &'r str, u16), &'r Arc<OutboundDecision>>;

fn default_decisions(outbound: &[crate::policy::ServiceOutbound]) -> DefaultDecisions<'_> {
    outbound
        .iter()
        .map(|o| {
            (
                (
                    &*o.client_namespace,
                    &*o.service_namespace,
                    &*o.service,
                    o.port,
                ),
                &o.decision,
            )
        })
        .collect()
}

struct DestinationBuilder<'a> {
    inventory: &'a Inventory,
    engine: &'a PolicyEngine,
    pods: &'a EndpointPods,
    config: &'a MeshConfig,
    default_decisions: DefaultDecisions<'a>,
    /// Encoded Destination by service and the decisions of its ports (pointers: the Arcs are
    /// alive for the whole computation), shared between classes that resolve alike.
    memo: HashMap<(&'a ObjectKey, Vec<usize>), Any>,
    /// Class sets by version, so classes with equal content share one `Arc`.
    by_version: HashMap<String, Arc<TypedResources>>,
}

impl<'a> DestinationBuilder<'a> {
    fn intern(&mut self, set: Arc<TypedResources>) -> Arc<TypedResources> {
        self.by_version
            .entry(set.version.clone())
            .or_insert(set)
            .clone()
    }

    /// The Destinations of every Service for clients of `class` (`labels`: any member's).
    fn class(&mut self, class: &ClassKey, labels: &BTreeMap<String, String>) -> TypedResources {
        let (namespace, rules) = class;
        let client = Client {
            namespace: namespace.clone(),
            labels: labels.clone(),
        };
        let inventory: &'a Inventory = self.inventory;
        let mut out = Vec::with_capacity(inventory.services.len());
        for (key, service) in &inventory.services {
            let decisions: Vec<Arc<OutboundDecision>> = service
                .info
                .ports
                .iter()
                .map(|port| {
                    let shared = rules.is_empty().then(|| {
                        self.default_decisions.get(&(
                            namespace.as_str(),
                            key.namespace.as_str(),
                            key.name.as_str(),
                            port.port,
                        ))
                    });
                    match shared.flatten() {
                        Some(d) => (*d).clone(),
                        None => {
                            let fqdn = crate::policy::host::service_fqdn(
                                &key.name,
                                &key.namespace,
                                &self.config.domain_suffix,
                            );
                            Arc::new(self.engine.outbound(&client, &fqdn, port.port, None))
                        }
                    }
                })
                .collect();
            let ptrs = decisions.iter().map(|d| Arc::as_ptr(d) as usize).collect();
            // Per-class decisions (selector rules) are fresh Arcs: never memoized by pointer.
            let memo_key = (key, ptrs);
            if rules.is_empty()
                && let Some(any) = self.memo.get(&memo_key)
            {
                out.push(any.clone());
                continue;
            }
            let endpoints = inventory
                .endpoints
                .get(key)
                .map(|e| e.as_slice())
                .unwrap_or_default();
            let message = resources::destination(
                service,
                endpoints,
                &decisions,
                self.pods,
                &self.config.domain_suffix,
            );
            let any = Any {
                type_url: DESTINATION_TYPE.to_string(),
                value: message.encode_to_vec(),
            };
            if rules.is_empty() {
                self.memo.insert(memo_key, any.clone());
            }
            out.push(any);
        }
        resources::typed_from_any(out)
    }
}
