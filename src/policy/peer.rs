//! PeerAuthentication: scopes, oldest-wins within a scope, inheritance (UNSET) and
//! port-level modes.
//!
//! As in Istio, the oldest policy of a scope wins whatever it sets: an older policy whose mode
//! is UNSET beats a newer STRICT one, and the scope then inherits from the one above. Istio
//! does this silently; here every loser gets a `Conflict` diagnostic naming the winner.

use std::collections::{BTreeMap, HashMap};

use crate::api::{MtlsMode, PeerAuthenticationSpec};

use super::diagnostics::diagnostic;
use super::model::{
    Decider, Diagnostic, DiagnosticKind, InboundDecision, ObjectRef, Policy, PolicyKind, Scope,
    Severity,
};

/// Where a PeerAuthentication applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerScope {
    /// Unselected, in the root namespace.
    Mesh,
    /// Unselected, in another namespace.
    Namespace,
    /// Selected workloads of its namespace.
    Workload,
    /// A selector in the root namespace: applies to nothing.
    Inert,
}

/// One PeerAuthentication, digested.
#[derive(Clone, Debug)]
pub(crate) struct PeerPolicy {
    pub(crate) object: ObjectRef,
    pub(crate) scope: PeerScope,
    pub(crate) mode: MtlsMode,
    /// Valid port entries (workload scope only), ascending.
    pub(crate) ports: Vec<(u16, MtlsMode)>,
    /// Position in "oldest first" order over all PeerAuthentications.
    pub(crate) rank: u32,
    /// Findings about this policy alone.
    pub(crate) findings: Vec<Diagnostic>,
}

/// The policies of one namespace.
#[derive(Debug, Default)]
struct NamespacePeers {
    /// Winner (the oldest) among the namespace-wide (mesh-wide, in the root namespace) policies.
    winner: Option<u32>,
    /// Selector policies by the first label of their selector: key, value, policies.
    by_label: HashMap<String, HashMap<String, Vec<u32>>>,
    /// Findings of the namespace-wide policies, including conflicts between them.
    findings: Vec<Diagnostic>,
}

/// Index of all PeerAuthentications.
#[derive(Debug)]
pub(crate) struct PeerIndex {
    pub(crate) policies: Vec<PeerPolicy>,
    root_namespace: String,
    namespaces: HashMap<String, NamespacePeers>,
    /// Conflicts between the unselected policies of each namespace (object-level).
    pub(crate) scope_conflicts: Vec<Diagnostic>,
}

/// The mode a workload resolves to, without explanations (cheap, no allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ModeSummary {
    pub(crate) mode: MtlsMode,
    /// The workload policy whose port entries apply.
    pub(crate) port_policy: Option<u32>,
}

fn kind_ref(policy: &Policy<PeerAuthenticationSpec>) -> ObjectRef {
    ObjectRef {
        kind: PolicyKind::PeerAuthentication,
        namespace: policy.meta.namespace.clone(),
        name: policy.meta.name.clone(),
    }
}

fn has_selector(spec: &PeerAuthenticationSpec) -> bool {
    spec.selector.as_ref().is_some_and(|s| !s.is_empty())
}

fn digest(policy: &Policy<PeerAuthenticationSpec>, root: &str, rank: u32) -> PeerPolicy {
    let object = kind_ref(policy);
    let spec = &policy.spec;
    let selected = has_selector(spec);
    let scope = match (selected, policy.meta.namespace == root) {
        (false, true) => PeerScope::Mesh,
        (false, false) => PeerScope::Namespace,
        (true, false) => PeerScope::Workload,
        (true, true) => PeerScope::Inert,
    };
    let mode = spec
        .mtls
        .as_ref()
        .map(|m| m.effective_mode())
        .unwrap_or_default();
    let mut findings = Vec::new();
    let mut ports = Vec::new();
    if scope == PeerScope::Inert {
        findings.push(diagnostic(
            Severity::Warning,
            &object,
            DiagnosticKind::RootNamespaceSelector,
            format!(
                "a policy with a selector in the root namespace {root} applies to nothing; remove the selector for a mesh-wide policy"
            ),
        ));
    } else if !spec.port_level_mtls.is_empty() && !selected {
        findings.push(diagnostic(
            Severity::Error,
            &object,
            DiagnosticKind::Invalid {
                field: "spec.portLevelMtls".into(),
            },
            "spec.portLevelMtls requires a non-empty selector; it is ignored".into(),
        ));
    } else {
        for (&key, mtls) in &spec.port_level_mtls {
            match u16::try_from(key) {
                Ok(port) if port != 0 => ports.push((port, mtls.effective_mode())),
                _ => findings.push(diagnostic(
                    Severity::Error,
                    &object,
                    DiagnosticKind::Invalid {
                        field: "spec.portLevelMtls".into(),
                    },
                    format!("spec.portLevelMtls: {key} is not a port number (1-65535); the entry is ignored"),
                )),
            }
        }
    }
    PeerPolicy {
        object,
        scope,
        mode,
        ports,
        rank,
        findings,
    }
}

fn conflict(loser: &PeerPolicy, winner: &PeerPolicy, scope: &str) -> Diagnostic {
    diagnostic(
        Severity::Warning,
        &loser.object,
        DiagnosticKind::Conflict {
            winner: winner.object.clone(),
        },
        format!(
            "lost to the older {} policy {} and has no effect there",
            scope, winner.object
        ),
    )
}

impl PeerIndex {
    /// Digests and indexes `policies`.
    pub(crate) fn build(policies: &[Policy<PeerAuthenticationSpec>], root: &str) -> PeerIndex {
        let mut order: Vec<usize> = (0..policies.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&policies[a].meta, &policies[b].meta);
            (a.age_key(), &a.namespace, a.seq).cmp(&(b.age_key(), &b.namespace, b.seq))
        });
        let mut rank = vec![0u32; policies.len()];
        for (position, &i) in order.iter().enumerate() {
            rank[i] = position as u32;
        }
        let digested: Vec<PeerPolicy> = policies
            .iter()
            .zip(&rank)
            .map(|(p, &r)| digest(p, root, r))
            .collect();
        let mut namespaces: HashMap<String, NamespacePeers> = HashMap::new();
        let mut scope_conflicts = Vec::new();
        // Oldest first, so the first policy of a scope is its winner.
        for &i in &order {
            let policy = &digested[i];
            let ns = namespaces
                .entry(policy.object.namespace.clone())
                .or_default();
            match policy.scope {
                PeerScope::Mesh | PeerScope::Namespace => {
                    ns.findings.extend(policy.findings.iter().cloned());
                    match ns.winner {
                        None => ns.winner = Some(i as u32),
                        Some(w) => {
                            let scope = if policy.scope == PeerScope::Mesh {
                                "mesh-wide"
                            } else {
                                "namespace-wide"
                            };
                            let c = conflict(policy, &digested[w as usize], scope);
                            ns.findings.push(c.clone());
                            scope_conflicts.push(c);
                        }
                    }
                }
                PeerScope::Workload | PeerScope::Inert => {
                    let spec = &policies[i].spec;
                    let first = spec
                        .selector
                        .as_ref()
                        .and_then(|s| s.match_labels.iter().next());
                    if let Some((k, v)) = first {
                        ns.by_label
                            .entry(k.clone())
                            .or_default()
                            .entry(v.clone())
                            .or_default()
                            .push(i as u32);
                    }
                }
            }
        }
        PeerIndex {
            policies: digested,
            root_namespace: root.to_string(),
            namespaces,
            scope_conflicts,
        }
    }

    /// The selector policies that match `labels` for a workload of `namespace`, oldest first,
    /// into `out`: those of `namespace`, and the root namespace's whatever `namespace` is.
    /// Root-namespace selector policies apply to nothing; they are matched so that every
    /// workload they seem to target can be told why they do not apply.
    pub(crate) fn matching(
        &self,
        specs: &[Policy<PeerAuthenticationSpec>],
        namespace: &str,
        labels: &BTreeMap<String, String>,
        out: &mut Vec<u32>,
    ) {
        out.clear();
        self.matching_in(specs, namespace, labels, out);
        if namespace != self.root_namespace {
            self.matching_in(specs, &self.root_namespace, labels, out);
        }
        out.sort_by_key(|&i| self.policies[i as usize].rank);
    }

    /// Appends the selector policies of `namespace` that match `labels`.
    fn matching_in(
        &self,
        specs: &[Policy<PeerAuthenticationSpec>],
        namespace: &str,
        labels: &BTreeMap<String, String>,
        out: &mut Vec<u32>,
    ) {
        let Some(ns) = self.namespaces.get(namespace) else {
            return;
        };
        if ns.by_label.is_empty() {
            return;
        }
        for (k, v) in labels {
            let Some(candidates) = ns.by_label.get(k).and_then(|values| values.get(v)) else {
                continue;
            };
            for &i in candidates {
                let matches = specs[i as usize]
                    .spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| s.matches(labels));
                if matches {
                    out.push(i);
                }
            }
        }
    }

    fn mesh_winner(&self) -> Option<&PeerPolicy> {
        let ns = self.namespaces.get(&self.root_namespace)?;
        ns.winner.map(|w| &self.policies[w as usize])
    }

    fn namespace_winner(&self, namespace: &str) -> Option<&PeerPolicy> {
        if namespace == self.root_namespace {
            return None;
        }
        let ns = self.namespaces.get(namespace)?;
        ns.winner.map(|w| &self.policies[w as usize])
    }

    fn workload_winner(&self, matched: &[u32]) -> Option<u32> {
        matched.iter().copied().find(|&i| {
            let p = &self.policies[i as usize];
            p.scope == PeerScope::Workload
        })
    }

    /// The resolved mode of a workload of `namespace` whose matching selector policies are
    /// `matched` (oldest first), and the policy whose port entries apply.
    pub(crate) fn summary(&self, namespace: &str, matched: &[u32]) -> ModeSummary {
        let mut mode = MtlsMode::Permissive;
        for policy in [self.mesh_winner(), self.namespace_winner(namespace)]
            .into_iter()
            .flatten()
        {
            if policy.mode != MtlsMode::Unset {
                mode = policy.mode;
            }
        }
        let winner = self.workload_winner(matched);
        if let Some(w) = winner {
            let policy = &self.policies[w as usize];
            if policy.mode != MtlsMode::Unset {
                mode = policy.mode;
            }
        }
        ModeSummary {
            mode,
            port_policy: winner.filter(|&w| !self.policies[w as usize].ports.is_empty()),
        }
    }

    /// The mode of `port` for a workload with `summary`.
    pub(crate) fn mode_for_port(&self, summary: ModeSummary, port: u16) -> MtlsMode {
        let Some(p) = summary.port_policy else {
            return summary.mode;
        };
        let ports = &self.policies[p as usize].ports;
        match ports.binary_search_by_key(&port, |&(n, _)| n) {
            Ok(at) if ports[at].1 != MtlsMode::Unset => ports[at].1,
            _ => summary.mode,
        }
    }

    /// Conflicts between the selector policies in `matched` (oldest first).
    pub(crate) fn workload_conflicts(&self, matched: &[u32], out: &mut Vec<Diagnostic>) {
        let Some(w) = self.workload_winner(matched) else {
            return;
        };
        let winner = &self.policies[w as usize];
        for &i in matched {
            let p = &self.policies[i as usize];
            if i != w && p.scope == PeerScope::Workload {
                out.push(conflict(p, winner, "workload"));
            }
        }
    }

    /// What a workload of `namespace` (not the root namespace) whose labels a root-namespace
    /// selector policy matches is told: the policy seems to target it, and does not.
    fn inert_for_workload(&self, policy: &PeerPolicy, namespace: &str) -> Diagnostic {
        diagnostic(
            Severity::Warning,
            &policy.object,
            DiagnosticKind::RootNamespaceSelector,
            format!(
                "its selector matches this workload, but a policy with a selector in the root namespace {} applies to nothing (a selector applies only in the policy's own namespace); move it to namespace {namespace} to apply it here, or remove the selector for a mesh-wide policy",
                self.root_namespace
            ),
        )
    }

    /// True when `i` is the winner of its mesh-wide or namespace-wide scope.
    pub(crate) fn wins_scope(&self, i: u32) -> bool {
        let namespace = &self.policies[i as usize].object.namespace;
        self.namespaces
            .get(namespace)
            .is_some_and(|ns| ns.winner == Some(i))
    }

    /// The workload-scope winner among `matched` (oldest first).
    pub(crate) fn winner_of(&self, matched: &[u32]) -> Option<u32> {
        self.workload_winner(matched)
    }

    /// The full explained decision.
    pub(crate) fn decide(&self, namespace: &str, matched: &[u32]) -> InboundDecision {
        let summary = self.summary(namespace, matched);
        let mut decided_by = Vec::new();
        let scoped = [
            (self.mesh_winner(), Scope::Mesh),
            (self.namespace_winner(namespace), Scope::Namespace),
        ];
        for (policy, scope) in scoped {
            if let Some(p) = policy.filter(|p| p.mode != MtlsMode::Unset) {
                decided_by.push(Decider {
                    object: p.object.clone(),
                    scope,
                });
            }
        }
        let mut port_modes = BTreeMap::new();
        if let Some(w) = self.workload_winner(matched) {
            let p = &self.policies[w as usize];
            if p.mode != MtlsMode::Unset {
                decided_by.push(Decider {
                    object: p.object.clone(),
                    scope: Scope::Workload,
                });
            }
            if !p.ports.is_empty() {
                decided_by.push(Decider {
                    object: p.object.clone(),
                    scope: Scope::Port,
                });
                for &(port, mode) in &p.ports {
                    let mode = if mode == MtlsMode::Unset {
                        summary.mode
                    } else {
                        mode
                    };
                    port_modes.insert(port, mode);
                }
            }
        }
        let mut diagnostics = Vec::new();
        if let Some(ns) = self.namespaces.get(&self.root_namespace) {
            diagnostics.extend(ns.findings.iter().cloned());
        }
        if namespace != self.root_namespace
            && let Some(ns) = self.namespaces.get(namespace)
        {
            diagnostics.extend(ns.findings.iter().cloned());
        }
        for &i in matched {
            let policy = &self.policies[i as usize];
            if policy.scope == PeerScope::Inert && namespace != self.root_namespace {
                diagnostics.push(self.inert_for_workload(policy, namespace));
            } else {
                diagnostics.extend(policy.findings.iter().cloned());
            }
        }
        self.workload_conflicts(matched, &mut diagnostics);
        super::diagnostics::sort_and_dedup(&mut diagnostics);
        InboundDecision {
            mode: summary.mode,
            port_modes,
            decided_by,
            diagnostics,
        }
    }
}
