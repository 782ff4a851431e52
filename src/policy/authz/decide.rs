//! Which policies apply to a workload, and the decision for one connection.
//!
//! [`WorkloadAuthz`] holds the compiled rules of the policies that apply to one workload, with
//! DENY and ALLOW rules indexed by exact principal, exact namespace or port, so a decision looks
//! at the few rules that could match rather than scanning every policy.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::api::{AuthorizationAction, AuthorizationPolicySpec, WorkloadSelector};
use crate::policy::model::{MeshConfig, ObjectRef, Policy, PolicyKind};

use super::compile::{CompiledPolicy, CompiledRule, compile};
use super::matcher::Attr;
use super::{Connection, Reason, RuleRef, Verdict};

/// All AuthorizationPolicies of the mesh, compiled once.
#[derive(Clone, Debug)]
pub struct AuthzEngine {
    root_namespace: String,
    policies: Vec<Entry>,
}

#[derive(Clone, Debug)]
struct Entry {
    compiled: Arc<CompiledPolicy>,
    selector: Option<WorkloadSelector>,
    targeted: bool,
}

impl AuthzEngine {
    /// Compiles `policies`; they are kept in (namespace, name) order, which is the order in
    /// which a decision names the first matching policy.
    pub fn new(config: &MeshConfig, policies: &[Policy<AuthorizationPolicySpec>]) -> AuthzEngine {
        let mut entries: Vec<Entry> = policies
            .iter()
            .map(|p| Entry {
                compiled: Arc::new(compile(
                    ObjectRef {
                        kind: PolicyKind::AuthorizationPolicy,
                        namespace: p.meta.namespace.clone(),
                        name: p.meta.name.clone(),
                    },
                    &p.spec,
                )),
                selector: p.spec.selector.clone(),
                targeted: p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty(),
            })
            .collect();
        entries.sort_by(|a, b| a.compiled.object.cmp(&b.compiled.object));
        AuthzEngine {
            root_namespace: config.root_namespace.clone(),
            policies: entries,
        }
    }

    /// Every policy, compiled, in decision order.
    pub fn policies(&self) -> impl Iterator<Item = &CompiledPolicy> {
        self.policies.iter().map(|e| &*e.compiled)
    }

    /// True when policy `object` applies to a workload of `namespace` with `labels`.
    pub fn applies(
        &self,
        object: &ObjectRef,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        self.policies
            .iter()
            .find(|e| e.compiled.object == *object)
            .is_some_and(|e| self.entry_applies(e, namespace, labels))
    }

    /// For each policy (in [`AuthzEngine::policies`] order), the number of `workloads` it
    /// applies to.
    pub fn workload_counts(&self, workloads: &[crate::policy::model::Workload]) -> Vec<usize> {
        self.policies
            .iter()
            .map(|e| {
                workloads
                    .iter()
                    .filter(|w| self.entry_applies(e, &w.namespace, &w.labels))
                    .count()
            })
            .collect()
    }

    fn entry_applies(&self, e: &Entry, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        if e.targeted {
            return false;
        }
        let policy_ns = e.compiled.object.namespace.as_str();
        // In the root namespace a policy covers every namespace, with or without a selector.
        if policy_ns != self.root_namespace && policy_ns != namespace {
            return false;
        }
        e.selector.as_ref().is_none_or(|s| s.matches(labels))
    }

    /// The policies that apply to a workload of `namespace` with `labels`, compiled into a
    /// decision index.
    pub fn for_workload(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> WorkloadAuthz {
        WorkloadAuthz::new(
            self.policies
                .iter()
                .filter(|e| self.entry_applies(e, namespace, labels))
                .map(|e| e.compiled.clone())
                .collect(),
        )
    }
}

impl AuthzEngine {
    /// Positions (in [`AuthzEngine::policies`] order) of the policies that apply to a workload
    /// of `namespace` with `labels`. Looks only at the policies of that namespace and of the
    /// root namespace (policies are sorted by namespace).
    pub fn applying(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Vec<usize> {
        let range = |ns: &str| {
            let start = self
                .policies
                .partition_point(|e| e.compiled.object.namespace.as_str() < ns);
            let end = self
                .policies
                .partition_point(|e| e.compiled.object.namespace.as_str() <= ns);
            start..end
        };
        let mut out: Vec<usize> = range(&self.root_namespace)
            .chain(if namespace == self.root_namespace {
                0..0
            } else {
                range(namespace)
            })
            .filter(|&i| self.entry_applies(&self.policies[i], namespace, labels))
            .collect();
        out.sort_unstable();
        out
    }
}

/// The authorization of one workload: the policies that apply to it, indexed for decisions.
#[derive(Clone, Debug, Default)]
pub struct WorkloadAuthz {
    policies: Vec<Arc<CompiledPolicy>>,
    custom: Option<u32>,
    deny: RuleSet,
    allow: RuleSet,
    has_allow: bool,
}

impl WorkloadAuthz {
    /// Indexes `policies` (already known to apply), in the given order.
    pub fn new(policies: Vec<Arc<CompiledPolicy>>) -> WorkloadAuthz {
        let mut authz = WorkloadAuthz::default();
        for (p, policy) in policies.iter().enumerate() {
            let p = u32::try_from(p).unwrap_or(u32::MAX);
            match policy.action {
                AuthorizationAction::Custom => {
                    authz.custom.get_or_insert(p);
                }
                AuthorizationAction::Deny => authz.deny.add(p, &policy.rules),
                AuthorizationAction::Allow => {
                    authz.has_allow = true;
                    authz.allow.add(p, &policy.rules);
                }
                AuthorizationAction::Audit => {}
            }
        }
        authz.policies = policies;
        authz
    }

    /// The policies that apply, in decision order.
    pub fn policies(&self) -> &[Arc<CompiledPolicy>] {
        &self.policies
    }

    /// The policy a [`RuleRef`] names.
    pub fn policy(&self, r: RuleRef) -> Option<&CompiledPolicy> {
        self.policies.get(r.policy as usize).map(|p| &**p)
    }

    /// Istio's order: a CUSTOM policy (not supported) denies; a matching DENY rule denies; with
    /// any ALLOW policy, one ALLOW rule must match; otherwise allow.
    pub fn decide(&self, c: &Connection) -> Verdict {
        if let Some(policy) = self.custom {
            return Verdict {
                allowed: false,
                reason: Reason::CustomUnsupported,
                decided_by: Some(RuleRef { policy, rule: None }),
            };
        }
        if let Some(r) = self.deny.first_match(c) {
            return Verdict {
                allowed: false,
                reason: Reason::DenyMatched,
                decided_by: Some(r),
            };
        }
        if !self.has_allow {
            return Verdict {
                allowed: true,
                reason: Reason::NoAllowPolicy,
                decided_by: None,
            };
        }
        match self.allow.first_match(c) {
            Some(r) => Verdict {
                allowed: true,
                reason: Reason::AllowMatched,
                decided_by: Some(r),
            },
            None => Verdict {
                allowed: false,
                reason: Reason::NoAllowMatched,
                decided_by: None,
            },
        }
    }
}

/// The rules of one action, indexed. Rule ids are positions in `rules`, which follows policy
/// order, so the smallest matching id is the first matching rule.
#[derive(Clone, Debug, Default)]
struct RuleSet {
    rules: Vec<(RuleRef, CompiledRule)>,
    by_principal: HashMap<Box<str>, Vec<u32>>,
    by_namespace: HashMap<Box<str>, Vec<u32>>,
    by_port: HashMap<u16, Vec<u32>>,
    rest: Vec<u32>,
}

impl RuleSet {
    fn add(&mut self, policy: u32, rules: &[CompiledRule]) {
        for (r, rule) in rules.iter().enumerate() {
            if rule.never {
                continue;
            }
            let id = u32::try_from(self.rules.len()).unwrap_or(u32::MAX);
            let rule_ref = RuleRef {
                policy,
                rule: Some(u32::try_from(r).unwrap_or(u32::MAX)),
            };
            self.rules.push((rule_ref, rule.clone()));
            if let Some(keys) = clause_keys(&rule.from, Attr::Principal) {
                for k in keys {
                    self.by_principal.entry(k.into()).or_default().push(id);
                }
            } else if let Some(keys) = clause_keys(&rule.from, Attr::Namespace) {
                for k in keys {
                    self.by_namespace.entry(k.into()).or_default().push(id);
                }
            } else if let Some(ports) = port_keys(&rule.to) {
                for p in ports {
                    self.by_port.entry(p).or_default().push(id);
                }
            } else {
                self.rest.push(id);
            }
        }
        for ids in self
            .by_principal
            .values_mut()
            .chain(self.by_namespace.values_mut())
            .chain(self.by_port.values_mut())
        {
            ids.dedup();
        }
    }

    fn first_match(&self, c: &Connection) -> Option<RuleRef> {
        let mut best: Option<u32> = None;
        let mut consider = |ids: &[u32]| {
            for &id in ids {
                if best.is_some_and(|b| id >= b) {
                    return;
                }
                if self
                    .rules
                    .get(id as usize)
                    .is_some_and(|(_, r)| r.matches(c))
                {
                    best = Some(id);
                    return;
                }
            }
        };
        if let Some(p) = c.principal.as_deref()
            && let Some(ids) = self.by_principal.get(p)
        {
            consider(ids);
        }
        if let Some(ns) = c.namespace.as_deref()
            && let Some(ids) = self.by_namespace.get(ns)
        {
            consider(ids);
        }
        if let Some(ids) = self.by_port.get(&c.destination_port) {
            consider(ids);
        }
        consider(&self.rest);
        best.and_then(|id| self.rules.get(id as usize))
            .map(|(r, _)| *r)
    }
}

/// When every alternative of a non-empty clause list requires one of a set of exact values of
/// `attr`, those values: a connection with another value cannot match the rule.
fn clause_keys(
    clauses: &[Vec<crate::policy::authz::matcher::Check>],
    attr: Attr,
) -> Option<Vec<&str>> {
    if clauses.is_empty() {
        return None;
    }
    let mut keys = Vec::new();
    for clause in clauses {
        keys.extend(clause.iter().find_map(|k| k.exact_keys(attr))?);
    }
    Some(keys)
}

fn port_keys(clauses: &[Vec<crate::policy::authz::matcher::Check>]) -> Option<Vec<u16>> {
    if clauses.is_empty() {
        return None;
    }
    let mut keys = Vec::new();
    for clause in clauses {
        keys.extend_from_slice(clause.iter().find_map(|k| k.port_keys())?);
    }
    Some(keys)
}

/// The decision by checking every rule of every policy in order, without the index: the
/// reference the indexed [`WorkloadAuthz::decide`] is tested against.
#[cfg(test)]
pub(crate) fn scan_decide(policies: &[Arc<CompiledPolicy>], c: &Connection) -> Verdict {
    let first = |action: AuthorizationAction| {
        policies.iter().enumerate().find_map(|(p, policy)| {
            (policy.action == action)
                .then(|| policy.rules.iter().position(|r| r.matches(c)))
                .flatten()
                .map(|r| RuleRef {
                    policy: p as u32,
                    rule: Some(r as u32),
                })
        })
    };
    let verdict = |allowed, reason, decided_by| Verdict {
        allowed,
        reason,
        decided_by,
    };
    if let Some(p) = policies
        .iter()
        .position(|p| p.action == AuthorizationAction::Custom)
    {
        let by = RuleRef {
            policy: p as u32,
            rule: None,
        };
        return verdict(false, Reason::CustomUnsupported, Some(by));
    }
    if let Some(r) = first(AuthorizationAction::Deny) {
        return verdict(false, Reason::DenyMatched, Some(r));
    }
    if !policies
        .iter()
        .any(|p| p.action == AuthorizationAction::Allow)
    {
        return verdict(true, Reason::NoAllowPolicy, None);
    }
    match first(AuthorizationAction::Allow) {
        Some(r) => verdict(true, Reason::AllowMatched, Some(r)),
        None => verdict(false, Reason::NoAllowMatched, None),
    }
}
