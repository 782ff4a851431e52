//! From an AuthorizationPolicy spec to compiled rules, with the findings about it.
//!
//! Istio's rule for what a TCP (L4) proxy cannot check is followed: unenforceable conditions
//! make a policy stricter, never looser. A field only an HTTP proxy can check (or a value that
//! does not parse) makes an ALLOW rule never match, and is dropped from a DENY rule, which then
//! matches on the rest.

use crate::api::{AuthorizationAction, AuthorizationPolicySpec, Condition, Operation, Source};
use crate::policy::diagnostics::diagnostic;
use crate::policy::model::{Diagnostic, DiagnosticKind, ObjectRef, Severity};

use super::matcher::{Attr, Check, StrMatch, Values, parse_cidrs, parse_ports};

/// Connection attributes a `when` condition may name at L4.
pub const L4_CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// One compiled rule: it matches when one `from` clause, one `to` clause and every `when`
/// check match. An empty clause list places no constraint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CompiledRule {
    /// Alternatives; each is a conjunction of checks.
    pub(crate) from: Vec<Vec<Check>>,
    /// Alternatives; each is a conjunction of checks.
    pub(crate) to: Vec<Vec<Check>>,
    /// A conjunction.
    pub(crate) when: Vec<Check>,
    /// An ALLOW rule with a field Palisade cannot check: it never matches.
    pub(crate) never: bool,
}

/// The straightforward reading of a rule, kept as the reference (`scan_decide`) that the
/// decision index is tested against.
#[cfg(test)]
impl CompiledRule {
    /// True when the connection satisfies the rule.
    pub(crate) fn matches(&self, c: &super::Connection) -> bool {
        !self.never
            && (self.from.is_empty()
                || self.from.iter().any(|all| all.iter().all(|k| k.matches(c))))
            && (self.to.is_empty() || self.to.iter().any(|all| all.iter().all(|k| k.matches(c))))
            && self.when.iter().all(|k| k.matches(c))
    }
}

/// One policy, compiled, with its own findings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// The policy.
    pub object: ObjectRef,
    /// Its action (absent in the spec: ALLOW).
    pub action: AuthorizationAction,
    pub(crate) rules: Vec<CompiledRule>,
    /// Findings about the policy on its own.
    pub diagnostics: Vec<Diagnostic>,
}

impl CompiledPolicy {
    /// How many of its rules can match at L4.
    pub fn matchable_rules(&self) -> usize {
        self.rules.iter().filter(|r| !r.never).count()
    }
}

/// Compiles one policy. `namespace` expands bare service-account names.
pub(crate) fn compile(object: ObjectRef, spec: &AuthorizationPolicySpec) -> CompiledPolicy {
    let action = spec.effective_action();
    let mut cx = Cx {
        object: &object,
        action,
        out: Vec::new(),
    };
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| cx.rule(i, rule))
        .collect::<Vec<_>>();
    cx.policy_findings(spec, &rules);
    let diagnostics = cx.out;
    CompiledPolicy {
        object,
        action,
        rules,
        diagnostics,
    }
}

struct Cx<'a> {
    object: &'a ObjectRef,
    action: AuthorizationAction,
    out: Vec<Diagnostic>,
}

/// A field of a rule: a check, nothing to check, or something that cannot be checked.
enum Field {
    Check(Check),
    Unenforceable,
}

impl Cx<'_> {
    fn push(&mut self, severity: Severity, kind: DiagnosticKind, message: String) {
        self.out
            .push(diagnostic(severity, self.object, kind, message));
    }

    fn effect(&self) -> &'static str {
        match self.action {
            AuthorizationAction::Allow => "this ALLOW rule never matches (fails closed)",
            AuthorizationAction::Deny => {
                "the field is ignored, so this DENY rule matches on its other fields (stricter)"
            }
            AuthorizationAction::Audit | AuthorizationAction::Custom => {
                "the field has no effect here"
            }
        }
    }

    fn http_only(&mut self, field: String) -> Field {
        let message = format!(
            "{field} can only be checked by an HTTP proxy; Palisade enforces at L4: {}",
            self.effect()
        );
        self.push(
            Severity::Warning,
            DiagnosticKind::NotEnforced { field },
            message,
        );
        Field::Unenforceable
    }

    fn invalid(&mut self, field: String, why: &str) -> Field {
        let message = format!("{field}: {why}: {}", self.effect());
        self.push(Severity::Error, DiagnosticKind::Invalid { field }, message);
        Field::Unenforceable
    }

    fn strings(&mut self, field: String, attr: Attr, values: &[String], negate: bool) -> Field {
        if attr == Attr::Principal && values.iter().any(|v| v.starts_with("spiffe://")) {
            return self.invalid(
                field,
                "principals are written without `spiffe://` (`<trust domain>/ns/<ns>/sa/<sa>`)",
            );
        }
        Field::Check(Check {
            attr,
            values: Values::Strings(values.iter().map(|v| StrMatch::parse(v)).collect()),
            negate,
        })
    }

    fn cidrs(&mut self, field: String, attr: Attr, values: &[String], negate: bool) -> Field {
        match parse_cidrs(values) {
            Some(cidrs) => Field::Check(Check {
                attr,
                values: Values::Cidrs(cidrs),
                negate,
            }),
            None => self.invalid(field, "not an IP address or CIDR range"),
        }
    }

    fn ports(&mut self, field: String, values: &[String], negate: bool) -> Field {
        match parse_ports(values) {
            Some(ports) => Field::Check(Check {
                attr: Attr::DestinationPort,
                values: Values::Ports(ports),
                negate,
            }),
            None => self.invalid(field, "not a port number (1-65535)"),
        }
    }

    fn rule(&mut self, i: usize, rule: &crate::api::AuthorizationRule) -> CompiledRule {
        let mut unenforceable = false;
        let mut from = Vec::new();
        for (j, entry) in rule.from.iter().enumerate() {
            let path = format!("spec.rules[{i}].from[{j}].source");
            let empty = Source::default();
            let source = entry.source.as_ref().unwrap_or(&empty);
            let fields = self.source(&path, source);
            from.push(self.clause(fields, &mut unenforceable));
        }
        let mut to = Vec::new();
        for (j, entry) in rule.to.iter().enumerate() {
            let path = format!("spec.rules[{i}].to[{j}].operation");
            let empty = Operation::default();
            let operation = entry.operation.as_ref().unwrap_or(&empty);
            let fields = self.operation(&path, operation);
            to.push(self.clause(fields, &mut unenforceable));
        }
        let mut when_fields = Vec::new();
        for (j, condition) in rule.when.iter().enumerate() {
            self.condition(
                &format!("spec.rules[{i}].when[{j}]"),
                condition,
                &mut when_fields,
            );
        }
        let when = self.clause(when_fields, &mut unenforceable);
        let never = unenforceable && self.action == AuthorizationAction::Allow;
        let compiled = CompiledRule {
            from,
            to,
            when,
            never,
        };
        let matches_all = !never
            && compiled.from.iter().all(Vec::is_empty)
            && compiled.to.iter().all(Vec::is_empty)
            && compiled.when.is_empty();
        if matches_all
            && matches!(
                self.action,
                AuthorizationAction::Allow | AuthorizationAction::Deny
            )
        {
            let verb = if self.action == AuthorizationAction::Allow {
                "allows"
            } else {
                "denies"
            };
            let field = format!("spec.rules[{i}]");
            let message = format!(
                "{field} matches every connection: this policy {verb} all traffic to the workloads it applies to"
            );
            self.push(
                Severity::Info,
                DiagnosticKind::MatchesEverything { field },
                message,
            );
        }
        compiled
    }

    /// The checks of one clause; an unenforceable field is dropped and remembered.
    fn clause(&mut self, fields: Vec<Field>, unenforceable: &mut bool) -> Vec<Check> {
        let mut checks = Vec::new();
        for field in fields {
            match field {
                Field::Check(check) => checks.push(check),
                Field::Unenforceable => *unenforceable = true,
            }
        }
        checks
    }

    fn source(&mut self, path: &str, s: &Source) -> Vec<Field> {
        let mut fields = Vec::new();
        let ns = self.object.namespace.clone();
        let list: [(&str, &Vec<String>, Attr, bool); 4] = [
            ("principals", &s.principals, Attr::Principal, false),
            ("notPrincipals", &s.not_principals, Attr::Principal, true),
            ("namespaces", &s.namespaces, Attr::Namespace, false),
            ("notNamespaces", &s.not_namespaces, Attr::Namespace, true),
        ];
        for (name, values, attr, negate) in list {
            if !values.is_empty() {
                fields.push(self.strings(format!("{path}.{name}"), attr, values, negate));
            }
        }
        for (values, negate) in [
            (&s.service_accounts, false),
            (&s.not_service_accounts, true),
        ] {
            if !values.is_empty() {
                // `<sa>` alone names a service account of the policy's namespace.
                let qualified: Vec<String> = values
                    .iter()
                    .map(|v| {
                        if v.contains('/') {
                            v.clone()
                        } else {
                            format!("{ns}/{v}")
                        }
                    })
                    .collect();
                fields.push(Field::Check(Check {
                    attr: Attr::ServiceAccount,
                    values: Values::Strings(
                        qualified
                            .into_iter()
                            .map(|v| StrMatch::Exact(v.into()))
                            .collect(),
                    ),
                    negate,
                }));
            }
        }
        for (name, values, negate) in [
            ("ipBlocks", &s.ip_blocks, false),
            ("notIpBlocks", &s.not_ip_blocks, true),
            ("remoteIpBlocks", &s.remote_ip_blocks, false),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks, true),
        ] {
            if !values.is_empty() {
                fields.push(self.cidrs(format!("{path}.{name}"), Attr::SourceIp, values, negate));
            }
        }
        for (name, values) in [
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
        ] {
            if !values.is_empty() {
                fields.push(self.http_only(format!("{path}.{name}")));
            }
        }
        fields
    }

    fn operation(&mut self, path: &str, o: &Operation) -> Vec<Field> {
        let mut fields = Vec::new();
        if !o.ports.is_empty() {
            fields.push(self.ports(format!("{path}.ports"), &o.ports, false));
        }
        if !o.not_ports.is_empty() {
            fields.push(self.ports(format!("{path}.notPorts"), &o.not_ports, true));
        }
        for (name, values) in [
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
        ] {
            if !values.is_empty() {
                fields.push(self.http_only(format!("{path}.{name}")));
            }
        }
        fields
    }

    fn condition(&mut self, path: &str, c: &Condition, fields: &mut Vec<Field>) {
        let key = c.key.as_str();
        let field = format!("{path} (key {key:?})");
        if key.starts_with("request.") || key.starts_with("experimental.") {
            fields.push(self.http_only(field));
            return;
        }
        if !L4_CONDITION_KEYS.contains(&key) {
            fields.push(self.invalid(field, "unknown condition key"));
            return;
        }
        if c.values.is_empty() && c.not_values.is_empty() {
            fields.push(self.invalid(field, "a condition needs values or notValues"));
            return;
        }
        for (values, negate) in [(&c.values, false), (&c.not_values, true)] {
            if values.is_empty() {
                continue;
            }
            let f = field.clone();
            fields.push(match key {
                "source.ip" | "remote.ip" => self.cidrs(f, Attr::SourceIp, values, negate),
                "destination.ip" => self.cidrs(f, Attr::DestinationIp, values, negate),
                "destination.port" => self.ports(f, values, negate),
                "source.namespace" => self.strings(f, Attr::Namespace, values, negate),
                "source.principal" => self.strings(f, Attr::Principal, values, negate),
                _ => self.strings(f, Attr::Sni, values, negate),
            });
        }
    }

    fn policy_findings(&mut self, spec: &AuthorizationPolicySpec, rules: &[CompiledRule]) {
        match self.action {
            AuthorizationAction::Custom => self.push(
                Severity::Error,
                DiagnosticKind::Unsupported {
                    field: "spec.action".into(),
                },
                "action CUSTOM (an external authorizer) is not supported by Palisade: every connection to the workloads this policy applies to is denied".into(),
            ),
            AuthorizationAction::Audit => self.push(
                Severity::Info,
                DiagnosticKind::NotEnforced {
                    field: "spec.action".into(),
                },
                "action AUDIT only marks requests for an audit plugin; Palisade has none, so this policy has no effect".into(),
            ),
            AuthorizationAction::Allow if rules.iter().all(|r| r.never) => {
                let why = if rules.is_empty() {
                    "it has no rules"
                } else {
                    "none of its rules can match at L4"
                };
                self.push(
                    Severity::Info,
                    DiagnosticKind::AllowsNothing,
                    format!("this ALLOW policy allows nothing ({why}): connections to the workloads it applies to are denied unless another ALLOW policy matches"),
                );
            }
            AuthorizationAction::Allow | AuthorizationAction::Deny => {}
        }
        if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
            self.push(
                Severity::Warning,
                DiagnosticKind::NotEnforced {
                    field: "spec.targetRefs".into(),
                },
                "targetRef/targetRefs attach a policy to a gateway or waypoint; a sidecar is neither, so this policy applies to no workload".into(),
            );
        }
    }
}
