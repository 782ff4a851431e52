//! DestinationRule: which rules a client uses for a host (the three lookup stages, exportTo,
//! workloadSelector, host specificity), how rules for one host merge, and the TLS settings of
//! the merged rule for a port and subset.

use std::collections::{BTreeMap, HashMap};

use crate::api::{ClientTlsSettings, DestinationRuleSpec, Subset, TrafficPolicy};

use super::diagnostics::{destination_rule_findings, diagnostic, effective_tls};
use super::host::{HostPattern, expand_host, wildcard_matches};
use super::model::{Diagnostic, DiagnosticKind, ObjectRef, Policy, PolicyKind, Severity};

/// To which namespaces a rule is visible.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Export {
    /// Every namespace (`*`, or no exportTo).
    All,
    /// Its own namespace when `own` (`.`), and the named ones.
    Only { own: bool, names: Vec<String> },
}

/// One DestinationRule, digested.
#[derive(Clone, Debug)]
pub(crate) struct DestRule {
    pub(crate) object: ObjectRef,
    /// Host after expansion with the rule's namespace.
    pub(crate) host: String,
    pub(crate) has_selector: bool,
    export: Export,
    /// Rules with equal `export_id` have the same normalized export set.
    export_id: u32,
    /// Findings about this rule alone.
    pub(crate) findings: Vec<Diagnostic>,
}

impl DestRule {
    /// True when a client in `namespace` may use this rule (workloadSelector rules: only in
    /// their own namespace).
    pub(crate) fn visible_to(&self, namespace: &str) -> bool {
        if self.has_selector {
            return namespace == self.object.namespace;
        }
        match &self.export {
            Export::All => true,
            Export::Only { own, names } => {
                (*own && namespace == self.object.namespace) || names.iter().any(|n| n == namespace)
            }
        }
    }
}

/// The rules of one namespace, grouped by expanded host.
#[derive(Debug, Default)]
struct NamespaceRules {
    exact: HashMap<String, Vec<u32>>,
    /// Wildcard suffix and rules, most specific (longest suffix) first.
    wildcards: Vec<(String, Vec<u32>)>,
}

/// Index of all DestinationRules.
#[derive(Debug, Default)]
pub(crate) struct DestIndex {
    pub(crate) rules: Vec<DestRule>,
    namespaces: HashMap<String, NamespaceRules>,
}

/// Rules merged for one host at one lookup stage.
#[derive(Debug)]
pub(crate) struct Merged<'a> {
    /// The merged rules, the first (the one used) first.
    pub(crate) rules: Vec<u32>,
    /// Rules for the same host with another export set, not merged.
    pub(crate) not_merged: Vec<u32>,
    /// The top-level traffic policy kept (the first rule's that has one).
    pub(crate) top: Option<&'a TrafficPolicy>,
    /// The subsets kept, in merge order.
    pub(crate) subsets: Vec<&'a Subset>,
    /// What the merge dropped or did not merge.
    pub(crate) diagnostics: Vec<Diagnostic>,
}

/// Where the client is and who it is, for a lookup.
pub(crate) struct Lookup<'q> {
    pub(crate) client_namespace: &'q str,
    pub(crate) client_labels: &'q BTreeMap<String, String>,
    /// Fully qualified host.
    pub(crate) host: &'q str,
    pub(crate) service_namespace: Option<&'q str>,
}

fn normalized_export(export_to: &[String]) -> Vec<String> {
    if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
        return vec!["*".to_string()];
    }
    let mut set = export_to.to_vec();
    set.sort();
    set.dedup();
    set
}

impl DestIndex {
    /// Digests and indexes `specs`.
    pub(crate) fn build(specs: &[Policy<DestinationRuleSpec>], domain_suffix: &str) -> DestIndex {
        let mut order: Vec<usize> = (0..specs.len()).collect();
        order.sort_by(|&a, &b| {
            let (pa, pb) = (&specs[a], &specs[b]);
            let key_a = (
                pa.spec.workload_selector.is_none(),
                pa.meta.age_key(),
                &pa.meta.namespace,
                pa.meta.seq,
            );
            let key_b = (
                pb.spec.workload_selector.is_none(),
                pb.meta.age_key(),
                &pb.meta.namespace,
                pb.meta.seq,
            );
            key_a.cmp(&key_b)
        });
        let mut export_ids: HashMap<Vec<String>, u32> = HashMap::new();
        let mut rules = Vec::with_capacity(specs.len());
        for policy in specs {
            let object = ObjectRef {
                kind: PolicyKind::DestinationRule,
                namespace: policy.meta.namespace.clone(),
                name: policy.meta.name.clone(),
            };
            let spec = &policy.spec;
            let mut findings = Vec::new();
            destination_rule_findings(&object, spec, &mut findings);
            let next_id = export_ids.len() as u32;
            let export_id = *export_ids
                .entry(normalized_export(&spec.export_to))
                .or_insert(next_id);
            let export = if spec.export_to.is_empty() || spec.export_to.iter().any(|e| e == "*") {
                Export::All
            } else {
                Export::Only {
                    own: spec.export_to.iter().any(|e| e == "."),
                    names: spec
                        .export_to
                        .iter()
                        .filter(|e| *e != ".")
                        .cloned()
                        .collect(),
                }
            };
            rules.push(DestRule {
                host: expand_host(&spec.host, &object.namespace, domain_suffix),
                object,
                has_selector: spec.workload_selector.is_some(),
                export,
                export_id,
                findings,
            });
        }
        let mut namespaces: HashMap<String, NamespaceRules> = HashMap::new();
        // Merge order within each host group: workloadSelector rules first, then oldest first.
        for &i in &order {
            let rule = &rules[i];
            if specs[i].spec.host.is_empty() {
                continue;
            }
            let ns = namespaces.entry(rule.object.namespace.clone()).or_default();
            match HostPattern::parse(&rule.host) {
                HostPattern::Exact(host) => ns.exact.entry(host).or_default().push(i as u32),
                HostPattern::Wildcard(suffix) => {
                    match ns.wildcards.iter_mut().find(|(s, _)| *s == suffix) {
                        Some((_, group)) => group.push(i as u32),
                        None => ns.wildcards.push((suffix, vec![i as u32])),
                    }
                }
            }
        }
        for ns in namespaces.values_mut() {
            ns.wildcards
                .sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        }
        DestIndex { rules, namespaces }
    }

    /// Every host group of every namespace (rules in merge order), for object-level checks.
    pub(crate) fn groups(&self) -> impl Iterator<Item = &[u32]> + '_ {
        self.namespaces.values().flat_map(|ns| {
            ns.exact
                .values()
                .map(Vec::as_slice)
                .chain(ns.wildcards.iter().map(|(_, g)| g.as_slice()))
        })
    }

    /// Namespaces that may each see a different subset of `group`: the rules' own namespace,
    /// every namespace named in an exportTo, and `None` for any other namespace.
    pub(crate) fn viewers<'s>(&'s self, group: &[u32]) -> Vec<Option<&'s str>> {
        let mut viewers: Vec<Option<&str>> = vec![None];
        for &i in group {
            let rule = &self.rules[i as usize];
            viewers.push(Some(rule.object.namespace.as_str()));
            if let Export::Only { names, .. } = &rule.export {
                viewers.extend(names.iter().map(|n| Some(n.as_str())));
            }
        }
        viewers.sort();
        viewers.dedup();
        viewers
    }

    /// The rules (in merge order) of the most specific host group of `namespace` that has at
    /// least one rule passing `keep`, into `out`. True when found.
    fn stage(
        &self,
        namespace: &str,
        host: &str,
        keep: impl Fn(u32) -> bool,
        out: &mut Vec<u32>,
    ) -> bool {
        let Some(ns) = self.namespaces.get(namespace) else {
            return false;
        };
        let mut take = |group: &[u32]| {
            out.extend(group.iter().copied().filter(|&i| keep(i)));
            !out.is_empty()
        };
        if let Some(group) = ns.exact.get(host)
            && take(group)
        {
            return true;
        }
        for (suffix, group) in &ns.wildcards {
            if wildcard_matches(suffix, host) && take(group) {
                return true;
            }
        }
        false
    }

    /// The candidate rules of a lookup: those of the first stage that has any (client
    /// namespace, then service namespace, then root namespace), for the most specific host,
    /// in merge order, into `out` (empty when no rule applies).
    pub(crate) fn candidates(
        &self,
        specs: &[Policy<DestinationRuleSpec>],
        lookup: &Lookup<'_>,
        root: &str,
        out: &mut Vec<u32>,
    ) {
        out.clear();
        let client_ns = lookup.client_namespace;
        let applies = |i: u32| {
            self.rules[i as usize].visible_to(client_ns)
                && match &specs[i as usize].spec.workload_selector {
                    None => true,
                    Some(selector) => selector.matches(lookup.client_labels),
                }
        };
        if self.stage(client_ns, lookup.host, applies, out) {
            return;
        }
        let exported = |i: u32| {
            let rule = &self.rules[i as usize];
            !rule.has_selector && rule.visible_to(client_ns)
        };
        if let Some(service_ns) = lookup.service_namespace
            && service_ns != client_ns
            && self.stage(service_ns, lookup.host, exported, out)
        {
            return;
        }
        if root != client_ns && Some(root) != lookup.service_namespace {
            self.stage(root, lookup.host, exported, out);
        }
    }

    /// Merges `candidates` (non-empty, in merge order): rules with the first one's export set
    /// merge, the others are reported as not merged.
    pub(crate) fn merge<'a>(
        &self,
        specs: &'a [Policy<DestinationRuleSpec>],
        candidates: &[u32],
    ) -> Merged<'a> {
        let mut merged = Merged {
            rules: Vec::new(),
            not_merged: Vec::new(),
            top: None,
            subsets: Vec::new(),
            diagnostics: Vec::new(),
        };
        let Some(&head) = candidates.first() else {
            return merged;
        };
        let head_rule = &self.rules[head as usize];
        for &i in candidates {
            let rule = &self.rules[i as usize];
            if rule.export_id != head_rule.export_id {
                merged.not_merged.push(i);
                merged.diagnostics.push(diagnostic(
                    Severity::Warning,
                    &rule.object,
                    DiagnosticKind::NotMerged {
                        used: head_rule.object.clone(),
                    },
                    format!(
                        "not merged with {} for host {}: its exportTo differs, so {} is used instead",
                        head_rule.object, rule.host, head_rule.object
                    ),
                ));
                continue;
            }
            merged.rules.push(i);
            let spec = &specs[i as usize].spec;
            if let Some(policy) = &spec.traffic_policy {
                if merged.top.is_none() {
                    merged.top = Some(policy);
                } else {
                    merged
                        .diagnostics
                        .push(dropped(rule, head_rule, "trafficPolicy".into()));
                }
            }
            let first_own = merged.subsets.len();
            for subset in &spec.subsets {
                let earlier = merged.subsets.iter().position(|s| s.name == subset.name);
                match earlier {
                    None => merged.subsets.push(subset),
                    // A duplicate within one rule is an intrinsic finding of that rule.
                    Some(at) if at >= first_own => {}
                    Some(_) => merged.diagnostics.push(dropped(
                        rule,
                        head_rule,
                        format!("subset {}", subset.name),
                    )),
                }
            }
        }
        merged
    }
}

fn dropped(rule: &DestRule, into: &DestRule, what: String) -> Diagnostic {
    diagnostic(
        Severity::Warning,
        &rule.object,
        DiagnosticKind::MergeDropped {
            into: into.object.clone(),
            what: what.clone(),
        },
        format!(
            "{what} dropped when merging into {} for host {}: the older rule's wins",
            into.object, rule.host
        ),
    )
}

/// Istio's MergeTrafficPolicy for TLS: the top-level settings, replaced by the top-level
/// port entry for `port` if any; then the subset's `tls` overrides, and the subset's port entry
/// replaces again. A port entry replaces even when it has no `tls` (no inheritance).
pub(crate) fn tls_for_port(
    merged: &Merged<'_>,
    port: u16,
    subset: Option<&Subset>,
) -> Option<ClientTlsSettings> {
    fn port_entry(policy: &TrafficPolicy, port: u16) -> Option<Option<&ClientTlsSettings>> {
        policy
            .port_level_settings
            .iter()
            .find(|entry| port != 0 && entry.port.number == u32::from(port))
            .map(|entry| entry.tls.as_ref())
    }
    let mut tls = None;
    if let Some(top) = merged.top {
        tls = top.tls.as_ref();
        if let Some(entry_tls) = port_entry(top, port) {
            tls = entry_tls;
        }
    }
    if let Some(policy) = subset.and_then(|s| s.traffic_policy.as_ref()) {
        if policy.tls.is_some() {
            tls = policy.tls.as_ref();
        }
        if let Some(entry_tls) = port_entry(policy, port) {
            tls = entry_tls;
        }
    }
    tls.map(effective_tls)
}
