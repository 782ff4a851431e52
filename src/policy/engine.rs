//! [`PolicyEngine`]: indexes built once from a [`MeshInput`], then inbound and outbound
//! lookups and the whole-mesh resolution.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::api::{DestinationRuleSpec, PeerAuthenticationSpec, Subset, TlsMode};

use super::destination::{DestIndex, Lookup, Merged, tls_for_port};
use super::diagnostics::{diagnostic, sort_and_dedup};
use super::host::{expand_host, namespace_of_service_host, service_fqdn};
use super::model::{
    Client, Diagnostic, DiagnosticKind, EndpointDecision, InboundDecision, MeshConfig, MeshInput,
    MeshResolution, ObjectRef, OutboundDecision, Policy, ServiceInfo, ServiceOutbound, Severity,
    TLS_MODE_LABEL, TLS_MODE_PALISADE, TargetPort, Workload, WorkloadInbound,
};
use super::peer::{ModeSummary, PeerIndex, PeerScope};

/// The policy engine: indexes built once from a [`MeshInput`]; every lookup is then cheap and
/// pure.
#[derive(Debug)]
pub struct PolicyEngine {
    config: MeshConfig,
    peer_specs: Vec<Policy<PeerAuthenticationSpec>>,
    peers: PeerIndex,
    dest_specs: Vec<Policy<DestinationRuleSpec>>,
    dests: DestIndex,
    workloads: Vec<Workload>,
    /// Interned namespace and name of each workload.
    workload_names: Vec<(Arc<str>, Arc<str>)>,
    /// Index into `match_sets` of each workload's matching selector policies.
    workload_match_set: Vec<u32>,
    /// Distinct lists of matching selector PeerAuthentications, oldest first.
    match_sets: Vec<Vec<u32>>,
    /// Resolved inbound mode of each workload.
    workload_modes: Vec<ModeSummary>,
    services: Vec<ServiceInfo>,
    /// Interned namespace and name of each service.
    service_names: Vec<(Arc<str>, Arc<str>)>,
    service_fqdns: Vec<String>,
    service_by_fqdn: HashMap<String, u32>,
    /// Workloads selected by each service's selector, in input order.
    service_endpoints: Vec<Vec<u32>>,
    /// Namespaces that have workloads, sorted.
    client_namespaces: Vec<Arc<str>>,
    diagnostics: Vec<Diagnostic>,
    ignored: BTreeSet<ObjectRef>,
}

fn intern(names: &mut HashMap<String, Arc<str>>, name: &str) -> Arc<str> {
    if let Some(found) = names.get(name) {
        return found.clone();
    }
    let interned: Arc<str> = Arc::from(name);
    names.insert(name.to_string(), interned.clone());
    interned
}

impl PolicyEngine {
    /// Indexes `input`. Never fails: invalid parts of objects are ignored and reported in
    /// [`PolicyEngine::diagnostics`].
    pub fn new(input: MeshInput) -> PolicyEngine {
        let MeshInput {
            config,
            namespaces: _,
            peer_authentications: peer_specs,
            destination_rules: dest_specs,
            workloads,
            services,
            inventory_complete,
        } = input;
        let peers = PeerIndex::build(&peer_specs, &config.root_namespace);
        let dests = DestIndex::build(&dest_specs, &config.domain_suffix);

        let mut names = HashMap::new();
        let mut set_ids: HashMap<Vec<u32>, u32> = HashMap::new();
        let mut match_sets = Vec::new();
        let mut workload_match_set = Vec::with_capacity(workloads.len());
        let mut workload_modes = Vec::with_capacity(workloads.len());
        let mut workload_names = Vec::with_capacity(workloads.len());
        let mut scratch = Vec::new();
        for workload in &workloads {
            peers.matching(
                &peer_specs,
                &workload.namespace,
                &workload.labels,
                &mut scratch,
            );
            let id = match set_ids.get(scratch.as_slice()) {
                Some(&id) => id,
                None => {
                    let id = match_sets.len() as u32;
                    set_ids.insert(scratch.clone(), id);
                    match_sets.push(scratch.clone());
                    id
                }
            };
            workload_match_set.push(id);
            workload_modes.push(peers.summary(&workload.namespace, &scratch));
            workload_names.push((
                intern(&mut names, &workload.namespace),
                Arc::from(workload.name.as_str()),
            ));
        }
        let client_namespaces: Vec<Arc<str>> = workload_names
            .iter()
            .map(|(ns, _)| ns.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();

        let service_endpoints = endpoints_of_services(&services, &workloads);
        let service_fqdns: Vec<String> = services
            .iter()
            .map(|s| service_fqdn(&s.name, &s.namespace, &config.domain_suffix))
            .collect();
        let mut service_by_fqdn = HashMap::with_capacity(services.len());
        for (i, fqdn) in service_fqdns.iter().enumerate() {
            service_by_fqdn.entry(fqdn.clone()).or_insert(i as u32);
        }
        let service_names = services
            .iter()
            .map(|s| (intern(&mut names, &s.namespace), Arc::from(s.name.as_str())))
            .collect();

        let mut engine = PolicyEngine {
            config,
            peer_specs,
            peers,
            dest_specs,
            dests,
            workloads,
            workload_names,
            workload_match_set,
            match_sets,
            workload_modes,
            services,
            service_names,
            service_fqdns,
            service_by_fqdn,
            service_endpoints,
            client_namespaces,
            diagnostics: Vec::new(),
            ignored: BTreeSet::new(),
        };
        engine.diagnostics = engine.object_diagnostics(inventory_complete);
        engine.ignored = engine.ignored_objects(inventory_complete);
        engine
    }

    /// The mesh settings the engine was built with.
    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    /// Every object-level finding, sorted by object, then message: conflicts, root-namespace
    /// selectors, selectors matching nothing (only with a complete inventory), merge drops,
    /// rules not merged, fields not enforced, invalid fields.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// The objects that currently take effect nowhere: PeerAuthentications that lost their
    /// mesh-wide or namespace-wide scope to an older policy, selector policies that match
    /// workloads but lose to an older policy on every one of them (only with a complete
    /// inventory), root-namespace selector policies, and DestinationRules without a host. A
    /// policy that merely selects nothing yet is not here: it takes effect when a matching
    /// workload appears.
    pub fn ignored(&self) -> &BTreeSet<ObjectRef> {
        &self.ignored
    }

    /// True when a Service with this fully qualified name is in the input.
    pub fn has_service(&self, fqdn: &str) -> bool {
        self.service_by_fqdn.contains_key(fqdn)
    }

    /// Expands a host as written in a rule of `namespace`: without a dot it becomes
    /// `<host>.<namespace>.svc.<domain_suffix>`; otherwise (and wildcards) it is literal.
    pub fn expand_host(&self, host: &str, namespace: &str) -> String {
        expand_host(host, namespace, &self.config.domain_suffix)
    }

    /// Effective inbound mode for a workload in `namespace` with pod `labels`.
    pub fn inbound(&self, namespace: &str, labels: &BTreeMap<String, String>) -> InboundDecision {
        let mut matched = Vec::new();
        self.peers
            .matching(&self.peer_specs, namespace, labels, &mut matched);
        self.peers.decide(namespace, &matched)
    }

    /// Client TLS for `host` (short name, FQDN or any name) and service `port`, with an optional
    /// `subset`. A short host is expanded with the client's namespace.
    ///
    /// When no rule sets TLS for the port, `endpoints` holds the auto mTLS decision of each
    /// endpoint of the service (for a `port` the service does not declare, the container port is
    /// taken to be `port` itself); endpoints lacking a named target port are not endpoints of
    /// that port and are left out, as Kubernetes does.
    pub fn outbound(
        &self,
        client: &Client,
        host: &str,
        port: u16,
        subset: Option<&str>,
    ) -> OutboundDecision {
        let fqdn = expand_host(host, &client.namespace, &self.config.domain_suffix);
        let service = self.service_by_fqdn.get(&fqdn).copied();
        let service_namespace = match service {
            Some(s) => Some(self.services[s as usize].namespace.as_str()),
            None => namespace_of_service_host(&fqdn, &self.config.domain_suffix),
        };
        let lookup = Lookup {
            client_namespace: &client.namespace,
            client_labels: &client.labels,
            host: &fqdn,
            service_namespace,
        };
        let mut candidates = Vec::new();
        self.dests.candidates(
            &self.dest_specs,
            &lookup,
            &self.config.root_namespace,
            &mut candidates,
        );
        let merged =
            (!candidates.is_empty()).then(|| self.dests.merge(&self.dest_specs, &candidates));
        self.decide_outbound(merged.as_ref(), fqdn, service, port, subset)
    }

    /// Whole-mesh resolution: the inbound decision of every workload, and the outbound
    /// decision of every (client namespace, service, service port) for the namespaces that
    /// have workloads (clients without labels). Identical decisions are shared.
    pub fn resolve_all(&self) -> MeshResolution {
        let mut inbound_cache: HashMap<(&str, u32), Arc<InboundDecision>> = HashMap::new();
        let mut inbound = Vec::with_capacity(self.workloads.len());
        for (i, workload) in self.workloads.iter().enumerate() {
            let set = self.workload_match_set[i];
            let decision = inbound_cache
                .entry((workload.namespace.as_str(), set))
                .or_insert_with(|| {
                    Arc::new(
                        self.peers
                            .decide(&workload.namespace, &self.match_sets[set as usize]),
                    )
                })
                .clone();
            let (namespace, name) = &self.workload_names[i];
            inbound.push(WorkloadInbound {
                namespace: namespace.clone(),
                workload: name.clone(),
                decision,
            });
        }

        const NO_RULE: u32 = u32::MAX;
        let no_labels = BTreeMap::new();
        let mut merge_ids: HashMap<Vec<u32>, u32> = HashMap::new();
        let mut merges: Vec<Merged<'_>> = Vec::new();
        let mut decisions: HashMap<(u32, u32, u16), Arc<OutboundDecision>> = HashMap::new();
        let ports: usize = self.services.iter().map(|s| s.ports.len()).sum();
        let mut outbound = Vec::with_capacity(ports * self.client_namespaces.len());
        let mut candidates = Vec::new();
        for client_namespace in &self.client_namespaces {
            for (s, service) in self.services.iter().enumerate() {
                let lookup = Lookup {
                    client_namespace,
                    client_labels: &no_labels,
                    host: &self.service_fqdns[s],
                    service_namespace: Some(&service.namespace),
                };
                self.dests.candidates(
                    &self.dest_specs,
                    &lookup,
                    &self.config.root_namespace,
                    &mut candidates,
                );
                let merge_id = if candidates.is_empty() {
                    NO_RULE
                } else if let Some(&id) = merge_ids.get(candidates.as_slice()) {
                    id
                } else {
                    let id = merges.len() as u32;
                    merges.push(self.dests.merge(&self.dest_specs, &candidates));
                    merge_ids.insert(candidates.clone(), id);
                    id
                };
                let (service_namespace, service_name) = &self.service_names[s];
                for port in &service.ports {
                    let decision = decisions
                        .entry((merge_id, s as u32, port.port))
                        .or_insert_with(|| {
                            let merged = merges.get(merge_id as usize);
                            Arc::new(self.decide_outbound(
                                merged,
                                self.service_fqdns[s].clone(),
                                Some(s as u32),
                                port.port,
                                None,
                            ))
                        })
                        .clone();
                    outbound.push(ServiceOutbound {
                        client_namespace: client_namespace.clone(),
                        service_namespace: service_namespace.clone(),
                        service: service_name.clone(),
                        port: port.port,
                        decision,
                    });
                }
            }
        }
        MeshResolution { inbound, outbound }
    }

    fn decide_outbound(
        &self,
        merged: Option<&Merged<'_>>,
        host: String,
        service: Option<u32>,
        port: u16,
        subset: Option<&str>,
    ) -> OutboundDecision {
        let mut diagnostics = Vec::new();
        let mut chosen: Option<&Subset> = None;
        if let Some(m) = merged {
            diagnostics.extend(m.diagnostics.iter().cloned());
            for &i in m.rules.iter().chain(&m.not_merged) {
                diagnostics.extend(self.dests.rules[i as usize].findings.iter().cloned());
            }
            if let Some(name) = subset {
                chosen = m.subsets.iter().copied().find(|s| s.name == name);
                if chosen.is_none()
                    && let Some(&head) = m.rules.first()
                {
                    let object = &self.dests.rules[head as usize].object;
                    diagnostics.push(diagnostic(
                        Severity::Warning,
                        object,
                        DiagnosticKind::UnknownSubset {
                            subset: name.to_string(),
                        },
                        format!(
                            "subset {name} is not defined for host {host}; its policy is ignored and all endpoints are used"
                        ),
                    ));
                }
            }
        }
        let tls = merged.and_then(|m| tls_for_port(m, port, chosen));
        let mut endpoints = Vec::new();
        let mut expected_identities = Vec::new();
        if let Some(s) = service {
            let wants_identities = match &tls {
                None => false,
                Some(t) => {
                    t.effective_mode() == TlsMode::IstioMutual && t.subject_alt_names.is_empty()
                }
            };
            let service = &self.services[s as usize];
            let target = service
                .ports
                .iter()
                .find(|p| p.port == port)
                .map(|p| p.target_port.clone())
                .unwrap_or(TargetPort::Number(port));
            for &w in &self.service_endpoints[s as usize] {
                let workload = &self.workloads[w as usize];
                if let Some(subset) = chosen
                    && !subset
                        .labels
                        .iter()
                        .all(|(k, v)| workload.labels.get(k) == Some(v))
                {
                    continue;
                }
                let Some(container_port) = container_port(workload, &target, port) else {
                    continue;
                };
                if tls.is_none() {
                    let decision = self.endpoint_decision(w, workload, container_port);
                    // Under auto mTLS only the endpoints reached over mTLS present an identity.
                    if decision.mtls {
                        expected_identities.push(self.spiffe_id(workload));
                    }
                    endpoints.push(decision);
                } else if wants_identities {
                    expected_identities.push(self.spiffe_id(workload));
                }
            }
            expected_identities.sort();
            expected_identities.dedup();
        }
        sort_and_dedup(&mut diagnostics);
        OutboundDecision {
            host,
            tls,
            rule: merged
                .and_then(|m| m.rules.first())
                .map(|&i| self.dests.rules[i as usize].object.clone()),
            merged_from: merged
                .map(|m| {
                    m.rules
                        .iter()
                        .map(|&i| self.dests.rules[i as usize].object.clone())
                        .collect()
                })
                .unwrap_or_default(),
            expected_identities,
            endpoints,
            diagnostics,
        }
    }

    fn spiffe_id(&self, workload: &Workload) -> String {
        let account = if workload.service_account.is_empty() {
            "default"
        } else {
            &workload.service_account
        };
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.config.trust_domain, workload.namespace, account
        )
    }

    fn endpoint_decision(&self, index: u32, workload: &Workload, port: u16) -> EndpointDecision {
        let name = format!("{}/{}", workload.namespace, workload.name);
        if !workload.is_meshed() {
            return EndpointDecision {
                workload: name,
                mtls: false,
                reason: format!("not meshed: no {TLS_MODE_LABEL}={TLS_MODE_PALISADE} label"),
            };
        }
        let mode = self
            .peers
            .mode_for_port(self.workload_modes[index as usize], port);
        let mtls = mode != crate::api::MtlsMode::Disable;
        EndpointDecision {
            workload: name,
            mtls,
            reason: format!("meshed, inbound mode {mode} on port {port}"),
        }
    }

    fn ignored_objects(&self, inventory_complete: bool) -> BTreeSet<ObjectRef> {
        let count = self.peers.policies.len();
        let (mut matched, mut won) = (vec![false; count], vec![false; count]);
        for set in &self.match_sets {
            for &i in set {
                matched[i as usize] = true;
            }
            if let Some(w) = self.peers.winner_of(set) {
                won[w as usize] = true;
            }
        }
        let mut ignored = BTreeSet::new();
        for (i, policy) in self.peers.policies.iter().enumerate() {
            let takes_no_effect = match policy.scope {
                PeerScope::Inert => true,
                PeerScope::Mesh | PeerScope::Namespace => !self.peers.wins_scope(i as u32),
                PeerScope::Workload => inventory_complete && matched[i] && !won[i],
            };
            if takes_no_effect {
                ignored.insert(policy.object.clone());
            }
        }
        for (rule, policy) in self.dests.rules.iter().zip(&self.dest_specs) {
            if policy.spec.host.is_empty() {
                ignored.insert(rule.object.clone());
            }
        }
        ignored
    }

    /// With a complete inventory, a root-namespace selector policy's finding names the
    /// workloads its selector matches (the ones whose owners wonder why it does not apply).
    fn inert_finding(&self, policy: u32, generic: &Diagnostic) -> Diagnostic {
        const LISTED: usize = 5;
        let mut names = Vec::new();
        let mut count = 0usize;
        for (w, &set) in self.workload_match_set.iter().enumerate() {
            if self.match_sets[set as usize].contains(&policy) {
                count += 1;
                if names.len() < LISTED {
                    let (namespace, name) = &self.workload_names[w];
                    names.push(format!("{namespace}/{name}"));
                }
            }
        }
        if count == 0 {
            return generic.clone();
        }
        let more = if count > names.len() {
            format!(" and {} more", count - names.len())
        } else {
            String::new()
        };
        let mut finding = generic.clone();
        finding.message = format!(
            "a policy with a selector in the root namespace {} applies to nothing (a selector applies only in the policy's own namespace), yet its selector matches {count} workload(s): {}{more}; move it to the namespace of the workloads it should apply to, or remove the selector for a mesh-wide policy",
            self.config.root_namespace,
            names.join(", "),
        );
        finding
    }

    fn object_diagnostics(&self, inventory_complete: bool) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for (i, policy) in self.peers.policies.iter().enumerate() {
            for finding in &policy.findings {
                if inventory_complete && finding.kind == DiagnosticKind::RootNamespaceSelector {
                    out.push(self.inert_finding(i as u32, finding));
                } else {
                    out.push(finding.clone());
                }
            }
        }
        out.extend(self.peers.scope_conflicts.iter().cloned());
        for set in &self.match_sets {
            self.peers.workload_conflicts(set, &mut out);
        }
        for rule in &self.dests.rules {
            out.extend(rule.findings.iter().cloned());
        }
        // Merges as clients see them (rules without workloadSelector), from every namespace
        // that sees a different set of the group's rules.
        let mut visible = Vec::new();
        for group in self.dests.groups() {
            for viewer in self.dests.viewers(group) {
                visible.clear();
                visible.extend(group.iter().copied().filter(|&i| {
                    let rule = &self.dests.rules[i as usize];
                    !rule.has_selector && rule.visible_to(viewer.unwrap_or_default())
                }));
                if visible.len() > 1 {
                    out.extend(self.dests.merge(&self.dest_specs, &visible).diagnostics);
                }
            }
        }
        if inventory_complete {
            self.selects_nothing(&mut out);
        }
        sort_and_dedup(&mut out);
        out
    }

    fn selects_nothing(&self, out: &mut Vec<Diagnostic>) {
        let mut used = vec![false; self.peers.policies.len()];
        for set in &self.match_sets {
            for &i in set {
                used[i as usize] = true;
            }
        }
        for (policy, used) in self.peers.policies.iter().zip(used) {
            if policy.scope == PeerScope::Workload && !used {
                out.push(diagnostic(
                    Severity::Warning,
                    &policy.object,
                    DiagnosticKind::SelectsNothing,
                    "spec.selector matches no workload of its namespace".into(),
                ));
            }
        }
        let mut by_namespace: HashMap<&str, Vec<&Workload>> = HashMap::new();
        if self
            .dest_specs
            .iter()
            .any(|p| p.spec.workload_selector.is_some())
        {
            for w in &self.workloads {
                by_namespace
                    .entry(w.namespace.as_str())
                    .or_default()
                    .push(w);
            }
        }
        for (rule, policy) in self.dests.rules.iter().zip(&self.dest_specs) {
            let Some(selector) = &policy.spec.workload_selector else {
                continue;
            };
            let any = by_namespace
                .get(policy.meta.namespace.as_str())
                .is_some_and(|ws| ws.iter().any(|w| selector.matches(&w.labels)));
            if !any {
                out.push(diagnostic(
                    Severity::Warning,
                    &rule.object,
                    DiagnosticKind::SelectsNothing,
                    "spec.workloadSelector matches no workload of its namespace".into(),
                ));
            }
        }
    }
}

/// The container port a service port's target resolves to on `workload`; `None` when it
/// targets a port name the workload does not have (Kubernetes then has no endpoint there).
fn container_port(workload: &Workload, target: &TargetPort, service_port: u16) -> Option<u16> {
    match target {
        TargetPort::Number(0) => Some(service_port),
        TargetPort::Number(n) => Some(*n),
        TargetPort::Name(name) => workload
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.port),
    }
}

/// The workloads each service selects (same namespace, every selector label), in input order.
/// Empty selectors select nothing.
fn endpoints_of_services(services: &[ServiceInfo], workloads: &[Workload]) -> Vec<Vec<u32>> {
    let mut by_first_label: HashMap<(&str, &str, &str), Vec<u32>> = HashMap::new();
    for (s, service) in services.iter().enumerate() {
        if let Some((k, v)) = service.selector.iter().next() {
            by_first_label
                .entry((service.namespace.as_str(), k.as_str(), v.as_str()))
                .or_default()
                .push(s as u32);
        }
    }
    let mut endpoints = vec![Vec::new(); services.len()];
    if by_first_label.is_empty() {
        return endpoints;
    }
    for (w, workload) in workloads.iter().enumerate() {
        for (k, v) in &workload.labels {
            let key = (workload.namespace.as_str(), k.as_str(), v.as_str());
            let Some(candidates) = by_first_label.get(&key) else {
                continue;
            };
            for &s in candidates {
                let selector = &services[s as usize].selector;
                if selector
                    .iter()
                    .all(|(k, v)| workload.labels.get(k) == Some(v))
                {
                    endpoints[s as usize].push(w as u32);
                }
            }
        }
    }
    endpoints
}
