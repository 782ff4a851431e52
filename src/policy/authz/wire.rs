//! The AuthorizationPolicy wire form (`palisade.v1.AuthorizationPolicy` in `mesh.proto`): a
//! compiled policy written by the control plane into a proxy's view, and read back by the proxy
//! into the same compiled rules, so both sides decide with one matcher.
//!
//! Reading is total and fails closed, like compiling a spec: a check the proxy cannot read (an
//! unknown attribute, a value that does not parse) makes an ALLOW rule never match and is
//! dropped from a DENY rule; an unknown action denies like CUSTOM.

use crate::api::AuthorizationAction;
use crate::policy::model::{ObjectRef, PolicyKind};
use crate::xds::proto::palisade_v1 as pb;

use super::compile::{CompiledPolicy, CompiledRule};
use super::matcher::{Attr, Check, StrMatch, Values, parse_cidrs, parse_ports};

use pb::authorization_check::Attribute;
use pb::authorization_policy::Action;

/// Rule positions up to this are kept as sent (shorter rule lists are padded with rules that
/// never match, so a decision names the rule by its place in `spec.rules`); a later position is
/// appended instead, which changes only the rule number a log line names.
const MAX_RULE_INDEX: u32 = 1024;

/// The wire form of `policy`; `None` for an AUDIT policy, which has no effect on a connection.
/// ALLOW rules that never match at L4 are left out (the policy stays, with its other rules).
pub fn to_wire(policy: &CompiledPolicy) -> Option<pb::AuthorizationPolicy> {
    let action = match policy.action {
        AuthorizationAction::Allow => Action::Allow,
        AuthorizationAction::Deny => Action::Deny,
        AuthorizationAction::Custom => Action::Custom,
        AuthorizationAction::Audit => return None,
    };
    let rules = policy
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.never)
        .map(|(i, r)| pb::AuthorizationRule {
            index: u32::try_from(i).unwrap_or(u32::MAX),
            from: r.from.iter().map(|c| clause(c)).collect(),
            to: r.to.iter().map(|c| clause(c)).collect(),
            when: (!r.when.is_empty()).then(|| clause(&r.when)),
        })
        .collect();
    Some(pb::AuthorizationPolicy {
        namespace: policy.object.namespace.clone(),
        name: policy.object.name.clone(),
        action: action as i32,
        rules,
    })
}

fn clause(checks: &[Check]) -> pb::AuthorizationClause {
    pb::AuthorizationClause {
        checks: checks.iter().map(check).collect(),
    }
}

fn check(c: &Check) -> pb::AuthorizationCheck {
    let attribute = match c.attr {
        Attr::Principal => Attribute::SourcePrincipal,
        Attr::Namespace => Attribute::SourceNamespace,
        Attr::ServiceAccount => Attribute::SourceServiceAccount,
        Attr::SourceIp => Attribute::SourceIp,
        Attr::DestinationIp => Attribute::DestinationIp,
        Attr::DestinationPort => Attribute::DestinationPort,
        Attr::Sni => Attribute::Sni,
    };
    let values = match &c.values {
        Values::Strings(patterns) => patterns
            .iter()
            .map(|p| match p {
                StrMatch::Present => "*".to_string(),
                StrMatch::Exact(v) => v.to_string(),
                StrMatch::Prefix(v) => format!("{v}*"),
                StrMatch::Suffix(v) => format!("*{v}"),
            })
            .collect(),
        Values::Cidrs(cidrs) => cidrs.iter().map(ToString::to_string).collect(),
        Values::Ports(ports) => ports.iter().map(ToString::to_string).collect(),
    };
    pb::AuthorizationCheck {
        attribute: attribute as i32,
        values,
        negate: c.negate,
    }
}

/// A policy read from the wire, and what could not be read (for the proxy's log; empty when
/// the control plane wrote what this proxy understands).
pub fn from_wire(policy: &pb::AuthorizationPolicy) -> (CompiledPolicy, Vec<String>) {
    let mut problems = Vec::new();
    let action = match Action::try_from(policy.action) {
        Ok(Action::Allow) => AuthorizationAction::Allow,
        Ok(Action::Deny) => AuthorizationAction::Deny,
        Ok(Action::Custom) => AuthorizationAction::Custom,
        Ok(Action::Unspecified) | Err(_) => {
            problems.push(format!(
                "unknown action {}: denying like CUSTOM",
                policy.action
            ));
            AuthorizationAction::Custom
        }
    };
    let mut rules: Vec<CompiledRule> = Vec::new();
    for wire in &policy.rules {
        let mut unreadable = false;
        let mut read_clause = |c: &pb::AuthorizationClause| -> Vec<Check> {
            c.checks
                .iter()
                .filter_map(|k| match read_check(k) {
                    Some(check) => Some(check),
                    None => {
                        unreadable = true;
                        None
                    }
                })
                .collect()
        };
        let from: Vec<Vec<Check>> = wire.from.iter().map(&mut read_clause).collect();
        let to: Vec<Vec<Check>> = wire.to.iter().map(&mut read_clause).collect();
        let when = wire.when.as_ref().map(&mut read_clause).unwrap_or_default();
        if unreadable {
            problems.push(format!(
                "rule {} has a check this proxy cannot read: {}",
                wire.index,
                if action == AuthorizationAction::Allow {
                    "the rule never matches"
                } else {
                    "the check is ignored"
                }
            ));
        }
        let rule = CompiledRule {
            from,
            to,
            when,
            never: unreadable && action == AuthorizationAction::Allow,
        };
        let index = wire.index as usize;
        if wire.index < MAX_RULE_INDEX && index >= rules.len() {
            rules.resize_with(index, never);
        }
        rules.push(rule);
    }
    let compiled = CompiledPolicy {
        object: ObjectRef {
            kind: PolicyKind::AuthorizationPolicy,
            namespace: policy.namespace.clone(),
            name: policy.name.clone(),
        },
        action,
        rules,
        diagnostics: Vec::new(),
    };
    (compiled, problems)
}

/// A placeholder for a rule the control plane did not send (it never matches at L4).
fn never() -> CompiledRule {
    CompiledRule {
        from: Vec::new(),
        to: Vec::new(),
        when: Vec::new(),
        never: true,
    }
}

/// One check, or `None` when it cannot be read.
fn read_check(c: &pb::AuthorizationCheck) -> Option<Check> {
    let attr = match Attribute::try_from(c.attribute).ok()? {
        Attribute::Unspecified => return None,
        Attribute::SourcePrincipal => Attr::Principal,
        Attribute::SourceNamespace => Attr::Namespace,
        Attribute::SourceServiceAccount => Attr::ServiceAccount,
        Attribute::SourceIp => Attr::SourceIp,
        Attribute::DestinationIp => Attr::DestinationIp,
        Attribute::DestinationPort => Attr::DestinationPort,
        Attribute::Sni => Attr::Sni,
    };
    if c.values.is_empty() {
        return None;
    }
    let values = match attr {
        Attr::Principal | Attr::Namespace | Attr::Sni => {
            Values::Strings(c.values.iter().map(|v| StrMatch::parse(v)).collect())
        }
        Attr::ServiceAccount => Values::Strings(
            c.values
                .iter()
                .map(|v| StrMatch::Exact(v.as_str().into()))
                .collect(),
        ),
        Attr::SourceIp | Attr::DestinationIp => Values::Cidrs(parse_cidrs(&c.values)?),
        Attr::DestinationPort => Values::Ports(parse_ports(&c.values)?),
    };
    Some(Check {
        attr,
        values,
        negate: c.negate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::authz::{AuthzEngine, Connection, WorkloadAuthz};
    use crate::policy::{MeshConfig, Policy, PolicyMeta};
    use std::collections::BTreeMap;
    use std::net::IpAddr;
    use std::sync::Arc;

    fn engine(specs: &[(&str, &str, serde_json::Value)]) -> AuthzEngine {
        let policies: Vec<Policy<crate::api::AuthorizationPolicySpec>> = specs
            .iter()
            .enumerate()
            .map(|(i, (ns, name, spec))| Policy {
                meta: PolicyMeta {
                    namespace: (*ns).into(),
                    name: (*name).into(),
                    creation_timestamp: None,
                    seq: i as u64,
                },
                spec: serde_json::from_value(spec.clone()).expect("spec"),
            })
            .collect();
        AuthzEngine::new(&MeshConfig::default(), &policies)
    }

    fn round_trip(authz: &WorkloadAuthz) -> WorkloadAuthz {
        let read = authz
            .policies()
            .iter()
            .filter_map(|p| to_wire(p))
            .map(|w| {
                let (compiled, problems) = from_wire(&w);
                assert!(problems.is_empty(), "{problems:?}");
                Arc::new(compiled)
            })
            .collect();
        WorkloadAuthz::new(read)
    }

    fn connections() -> Vec<Connection> {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut out = Vec::new();
        for id in [
            "spiffe://cluster.local/ns/shop/sa/frontend",
            "spiffe://cluster.local/ns/shop/sa/admin",
            "spiffe://cluster.local/ns/evil/sa/frontend",
            "spiffe://other.td/ns/shop/sa/frontend",
        ] {
            for port in [8080, 9090] {
                for src in ["10.1.2.3", "192.168.0.9", "fd00::7"] {
                    let c = Connection::mtls(id, ip(src), ip("10.0.0.10"), port).unwrap();
                    out.push(c.clone().with_sni(Some("web.shop".into())));
                    out.push(c);
                }
            }
        }
        for port in [8080, 9090] {
            for src in ["10.1.2.3", "192.168.0.9"] {
                out.push(Connection::plaintext(ip(src), ip("10.0.0.10"), port));
            }
        }
        out
    }

    #[test]
    fn every_field_survives_the_wire_and_decides_alike() {
        let e = engine(&[
            (
                "shop",
                "allow-frontend",
                serde_json::json!({"rules": [
                    {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend", "*/sa/admin"]}},
                              {"source": {"namespaces": ["sh*"], "notIpBlocks": ["192.168.0.0/16"]}}],
                     "to": [{"operation": {"ports": ["8080"], "methods": ["GET"]}}]},
                    {"from": [{"source": {"serviceAccounts": ["admin"], "ipBlocks": ["10.0.0.0/8", "fd00::/8"]}}],
                     "to": [{"operation": {"notPorts": ["22"]}}],
                     "when": [{"key": "connection.sni", "values": ["*.shop"]},
                              {"key": "destination.ip", "values": ["10.0.0.10"]},
                              {"key": "source.principal", "notValues": ["*/ns/evil/*"]}]}
                ]}),
            ),
            (
                "shop",
                "deny-evil",
                serde_json::json!({"action": "DENY", "rules": [
                    {"from": [{"source": {"notNamespaces": ["shop"], "requestPrincipals": ["*"]}}],
                     "to": [{"operation": {"ports": ["9090"]}}]}
                ]}),
            ),
            (
                "shop",
                "audit",
                serde_json::json!({"action": "AUDIT", "rules": [{}]}),
            ),
        ]);
        let authz = e.for_workload("shop", &BTreeMap::new());
        let wire = round_trip(&authz);
        assert_eq!(wire.policies().len(), 2, "AUDIT is not sent");
        let mut allowed = 0;
        for c in connections() {
            let (a, b) = (authz.decide(&c), wire.decide(&c));
            assert_eq!(a.allowed, b.allowed, "{c:?}");
            assert_eq!(a.reason, b.reason, "{c:?}");
            let name = |v: &crate::policy::authz::Verdict, w: &WorkloadAuthz| {
                v.decided_by
                    .and_then(|r| w.policy(r).map(|p| (p.object.name.clone(), r.rule)))
            };
            assert_eq!(name(&a, &authz), name(&b, &wire), "{c:?}");
            allowed += usize::from(a.allowed);
        }
        assert!(allowed > 0 && allowed < connections().len(), "{allowed}");
    }

    #[test]
    fn an_allow_rule_that_never_matches_is_not_sent_but_keeps_later_rule_numbers() {
        let e = engine(&[(
            "shop",
            "p",
            serde_json::json!({"rules": [
                {"to": [{"operation": {"paths": ["/admin"]}}]},
                {"from": [{"source": {"namespaces": ["shop"]}}]}
            ]}),
        )]);
        let authz = e.for_workload("shop", &BTreeMap::new());
        let wire = to_wire(&authz.policies()[0]).unwrap();
        assert_eq!(wire.rules.len(), 1);
        assert_eq!(wire.rules[0].index, 1);
        let read = WorkloadAuthz::new(vec![Arc::new(from_wire(&wire).0)]);
        let c = shop_x();
        assert_eq!(read.decide(&c).decided_by.unwrap().rule, Some(1));
    }

    fn shop_x() -> Connection {
        Connection::mtls(
            "spiffe://cluster.local/ns/shop/sa/x",
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            80,
        )
        .unwrap()
    }

    fn wire_check(attribute: i32, values: &[&str]) -> pb::AuthorizationCheck {
        pb::AuthorizationCheck {
            attribute,
            values: values.iter().map(|v| v.to_string()).collect(),
            negate: false,
        }
    }

    #[test]
    fn what_cannot_be_read_fails_closed() {
        let c = shop_x();
        let bad_checks = [
            wire_check(0, &["x"]),
            wire_check(99, &["x"]),
            wire_check(Attribute::SourceIp as i32, &["not-an-ip"]),
            wire_check(Attribute::DestinationPort as i32, &["0"]),
            wire_check(Attribute::DestinationPort as i32, &[]),
        ];
        for bad in bad_checks {
            let rule = |action: Action| pb::AuthorizationPolicy {
                namespace: "shop".into(),
                name: "p".into(),
                action: action as i32,
                rules: vec![pb::AuthorizationRule {
                    index: 0,
                    from: vec![pb::AuthorizationClause {
                        checks: vec![bad.clone()],
                    }],
                    ..Default::default()
                }],
            };
            // ALLOW: the rule never matches, so the only ALLOW policy denies.
            let (allow, problems) = from_wire(&rule(Action::Allow));
            assert_eq!(problems.len(), 1, "{bad:?}");
            assert!(
                !WorkloadAuthz::new(vec![Arc::new(allow)]).decide(&c).allowed,
                "{bad:?}"
            );
            // DENY: the check is dropped, so the rule matches everyone.
            let (deny, _) = from_wire(&rule(Action::Deny));
            assert!(
                !WorkloadAuthz::new(vec![Arc::new(deny)]).decide(&c).allowed,
                "{bad:?}"
            );
        }
        // An unknown action denies.
        let unknown = pb::AuthorizationPolicy {
            action: 42,
            ..Default::default()
        };
        let (p, problems) = from_wire(&unknown);
        assert_eq!(problems.len(), 1);
        assert!(!WorkloadAuthz::new(vec![Arc::new(p)]).decide(&c).allowed);
        // A huge rule index is appended, not padded to.
        let far = pb::AuthorizationPolicy {
            action: Action::Allow as i32,
            rules: vec![pb::AuthorizationRule {
                index: u32::MAX,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(from_wire(&far).0.rules.len(), 1);
    }
}
