//! Which policies apply to a workload, and the decision for one connection.
//!
//! [`WorkloadAuthz`] holds the compiled rules of the policies that apply to one workload, with
//! DENY and ALLOW rules flattened and indexed by an attribute each rule requires (exact
//! principal, principal prefix or suffix, namespace, source address block, port, …; see
//! `index`), so a decision looks at the few rules that could match rather than scanning every
//! policy.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::api::{AuthorizationAction, AuthorizationPolicySpec, WorkloadSelector};
use crate::policy::model::{MeshConfig, ObjectRef, Policy, PolicyKind};

use super::compile::{CompiledPolicy, CompiledRule, compile};
use super::index::{Facts, RuleSet};
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

    /// The policy at position `i` of [`AuthzEngine::policies`].
    pub fn policy(&self, i: usize) -> Option<&CompiledPolicy> {
        self.policies.get(i).map(|e| &*e.compiled)
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
    /// applies to. Each workload looks only at the policies of its namespace and of the root
    /// namespace ([`AuthzEngine::applying`]), so the cost follows workloads, not workloads
    /// times policies (the status writer calls this on every inventory change).
    pub fn workload_counts<'w>(
        &self,
        workloads: impl IntoIterator<Item = &'w crate::policy::model::Workload>,
    ) -> Vec<usize> {
        let mut counts = vec![0; self.policies.len()];
        for w in workloads {
            for i in self.applying(&w.namespace, &w.labels) {
                counts[i] += 1;
            }
        }
        counts
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
        let mut deny: Vec<(u32, &[CompiledRule])> = Vec::new();
        let mut allow: Vec<(u32, &[CompiledRule])> = Vec::new();
        for (p, policy) in policies.iter().enumerate() {
            let p = u32::try_from(p).unwrap_or(u32::MAX);
            match policy.action {
                AuthorizationAction::Custom => {
                    authz.custom.get_or_insert(p);
                }
                AuthorizationAction::Deny => deny.push((p, &policy.rules)),
                AuthorizationAction::Allow => {
                    authz.has_allow = true;
                    allow.push((p, &policy.rules));
                }
                AuthorizationAction::Audit => {}
            }
        }
        authz.deny = RuleSet::new(&deny);
        authz.allow = RuleSet::new(&allow);
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
        // What the rules read of the connection, taken once for both actions.
        let f = Facts::new(c);
        if let Some(r) = self.deny.first_match(&f) {
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
        match self.allow.first_match(&f) {
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
