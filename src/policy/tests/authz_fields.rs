//! AuthorizationPolicy fields at L4, one table per field family: principals and service
//! accounts, namespaces, address blocks, ports, conditions, and fields only an HTTP proxy could
//! check (in ALLOW and in DENY).

use serde_json::{Value, json};

use super::authz::{engine, from_sa, ip, plaintext};
use super::labels;
use crate::policy::authz::Connection;

/// One ALLOW policy `spec` on workload shop/web: is `connection` allowed?
fn allowed_by(spec: Value, connection: &Connection) -> bool {
    let engine = engine(&vec![("shop", "p", spec)]);
    engine
        .for_workload("shop", &labels(&[("app", "web")]))
        .decide(connection)
        .allowed
}

fn source(source: Value) -> Value {
    json!({"rules": [{"from": [{"source": source}]}]})
}

#[test]
fn principals_with_wildcards_and_plaintext() {
    let c = from_sa("shop", "client", 80);
    let p = plaintext("10.1.0.5", 80);
    let table: Vec<(&str, Value, &Connection, bool)> = vec![
        (
            "exact",
            source(json!({"principals": ["cluster.local/ns/shop/sa/client"]})),
            &c,
            true,
        ),
        (
            "other sa",
            source(json!({"principals": ["cluster.local/ns/shop/sa/other"]})),
            &c,
            false,
        ),
        (
            "prefix *",
            source(json!({"principals": ["cluster.local/ns/shop/*"]})),
            &c,
            true,
        ),
        (
            "prefix * other ns",
            source(json!({"principals": ["cluster.local/ns/web/*"]})),
            &c,
            false,
        ),
        (
            "suffix *",
            source(json!({"principals": ["*/sa/client"]})),
            &c,
            true,
        ),
        (
            "suffix * other sa",
            source(json!({"principals": ["*/sa/admin"]})),
            &c,
            false,
        ),
        (
            "* is any authenticated peer",
            source(json!({"principals": ["*"]})),
            &c,
            true,
        ),
        (
            "* does not match plaintext",
            source(json!({"principals": ["*"]})),
            &p,
            false,
        ),
        (
            "spiffe:// prefix never matches (fails closed)",
            source(json!({"principals": ["spiffe://cluster.local/ns/shop/sa/client"]})),
            &c,
            false,
        ),
        (
            "other trust domain",
            source(json!({"principals": ["example.org/ns/shop/sa/client"]})),
            &c,
            false,
        ),
        (
            "notPrincipals excludes",
            source(json!({"notPrincipals": ["cluster.local/ns/shop/sa/client"]})),
            &c,
            false,
        ),
        (
            "notPrincipals lets others in",
            source(json!({"notPrincipals": ["cluster.local/ns/shop/sa/other"]})),
            &c,
            true,
        ),
        (
            "notPrincipals [*] is plaintext only",
            source(json!({"notPrincipals": ["*"]})),
            &p,
            true,
        ),
        (
            "notPrincipals [*] keeps mTLS out",
            source(json!({"notPrincipals": ["*"]})),
            &c,
            false,
        ),
        (
            "serviceAccounts ns/sa",
            source(json!({"serviceAccounts": ["shop/client"]})),
            &c,
            true,
        ),
        (
            "serviceAccounts bare name is the policy's namespace",
            source(json!({"serviceAccounts": ["client"]})),
            &c,
            true,
        ),
        (
            "serviceAccounts other",
            source(json!({"serviceAccounts": ["web/client"]})),
            &c,
            false,
        ),
        (
            "notServiceAccounts",
            source(json!({"notServiceAccounts": ["shop/client"]})),
            &c,
            false,
        ),
        (
            "serviceAccounts never match plaintext",
            source(json!({"serviceAccounts": ["shop/client"]})),
            &p,
            false,
        ),
    ];
    for (name, spec, connection, want) in table {
        assert_eq!(allowed_by(spec, connection), want, "{name}");
    }
}

#[test]
fn namespaces_come_from_the_identity() {
    let c = from_sa("payments", "api", 80);
    let p = plaintext("10.1.0.5", 80);
    let table: Vec<(&str, Value, &Connection, bool)> = vec![
        (
            "namespace of the identity",
            source(json!({"namespaces": ["payments"]})),
            &c,
            true,
        ),
        (
            "other namespace",
            source(json!({"namespaces": ["shop"]})),
            &c,
            false,
        ),
        ("prefix", source(json!({"namespaces": ["pay*"]})), &c, true),
        (
            "suffix",
            source(json!({"namespaces": ["*ments"]})),
            &c,
            true,
        ),
        (
            "plaintext has no namespace",
            source(json!({"namespaces": ["*"]})),
            &p,
            false,
        ),
        (
            "notNamespaces excludes",
            source(json!({"notNamespaces": ["payments"]})),
            &c,
            false,
        ),
        (
            "notNamespaces matches plaintext",
            source(json!({"notNamespaces": ["payments"]})),
            &p,
            true,
        ),
        (
            "all fields of a source must match",
            source(json!({"namespaces": ["payments"], "principals": ["*/sa/other"]})),
            &c,
            false,
        ),
    ];
    for (name, spec, connection, want) in table {
        assert_eq!(allowed_by(spec, connection), want, "{name}");
    }
}

#[test]
fn ip_blocks() {
    let c = |a: &str| Connection::plaintext(ip(a), ip("10.2.0.9"), 80);
    let table: Vec<(&str, Value, Connection, bool)> = vec![
        (
            "in CIDR",
            source(json!({"ipBlocks": ["10.1.0.0/16"]})),
            c("10.1.2.3"),
            true,
        ),
        (
            "outside CIDR",
            source(json!({"ipBlocks": ["10.1.0.0/16"]})),
            c("10.3.2.3"),
            false,
        ),
        (
            "single address",
            source(json!({"ipBlocks": ["10.1.2.3"]})),
            c("10.1.2.3"),
            true,
        ),
        (
            "single address, other",
            source(json!({"ipBlocks": ["10.1.2.3"]})),
            c("10.1.2.4"),
            false,
        ),
        (
            "IPv6",
            source(json!({"ipBlocks": ["fd00::/8"]})),
            c("fd00::1"),
            true,
        ),
        (
            "IPv4-mapped IPv6 peer compared as IPv4",
            source(json!({"ipBlocks": ["10.1.0.0/16"]})),
            c("::ffff:10.1.2.3"),
            true,
        ),
        (
            "notIpBlocks",
            source(json!({"notIpBlocks": ["10.1.0.0/16"]})),
            c("10.1.2.3"),
            false,
        ),
        (
            "remoteIpBlocks is the peer without a PROXY header",
            source(json!({"remoteIpBlocks": ["10.1.0.0/16"]})),
            c("10.1.2.3"),
            true,
        ),
        (
            "notRemoteIpBlocks",
            source(json!({"notRemoteIpBlocks": ["10.1.0.0/16"]})),
            c("10.1.2.3"),
            false,
        ),
        (
            "an invalid block fails closed in ALLOW",
            source(json!({"ipBlocks": ["10.1.0.0/16", "not-an-ip"]})),
            c("10.1.2.3"),
            false,
        ),
    ];
    for (name, spec, connection, want) in table {
        assert_eq!(allowed_by(spec, &connection), want, "{name}");
    }
}

fn operation(operation: Value) -> Value {
    json!({"rules": [{"to": [{"operation": operation}]}]})
}

#[test]
fn ports_and_conditions() {
    let c = |port| from_sa("shop", "client", port);
    let when =
        |key: &str, values: Value| json!({"rules": [{"when": [{"key": key, "values": values}]}]});
    let not_when = |key: &str, values: Value| json!({"rules": [{"when": [{"key": key, "notValues": values}]}]});
    let table: Vec<(&str, Value, Connection, bool)> = vec![
        (
            "port listed",
            operation(json!({"ports": ["8080", "9090"]})),
            c(9090),
            true,
        ),
        (
            "port not listed",
            operation(json!({"ports": ["8080"]})),
            c(9090),
            false,
        ),
        (
            "notPorts",
            operation(json!({"notPorts": ["8080"]})),
            c(8080),
            false,
        ),
        (
            "notPorts other",
            operation(json!({"notPorts": ["8080"]})),
            c(9090),
            true,
        ),
        (
            "invalid port fails closed",
            operation(json!({"ports": ["http"]})),
            c(80),
            false,
        ),
        (
            "when source.namespace",
            when("source.namespace", json!(["shop"])),
            c(80),
            true,
        ),
        (
            "when source.namespace other",
            when("source.namespace", json!(["web"])),
            c(80),
            false,
        ),
        (
            "when source.principal",
            when("source.principal", json!(["cluster.local/ns/shop/*"])),
            c(80),
            true,
        ),
        (
            "when source.ip",
            when("source.ip", json!(["10.1.0.0/24"])),
            c(80),
            true,
        ),
        (
            "when remote.ip",
            when("remote.ip", json!(["10.9.0.0/24"])),
            c(80),
            false,
        ),
        (
            "when destination.ip",
            when("destination.ip", json!(["10.2.0.9"])),
            c(80),
            true,
        ),
        (
            "when destination.port",
            when("destination.port", json!(["80"])),
            c(80),
            true,
        ),
        (
            "when destination.port other",
            when("destination.port", json!(["81"])),
            c(80),
            false,
        ),
        (
            "when notValues",
            not_when("source.namespace", json!(["shop"])),
            c(80),
            false,
        ),
        (
            "when connection.sni",
            when("connection.sni", json!(["*.shop.svc.cluster.local"])),
            c(80).with_sni(Some("web.shop.svc.cluster.local".into())),
            true,
        ),
        (
            "when connection.sni without SNI",
            when("connection.sni", json!(["*"])),
            c(80),
            false,
        ),
        (
            "unknown key fails closed",
            when("source.labels", json!(["x"])),
            c(80),
            false,
        ),
        (
            "all conditions must hold",
            json!({"rules": [{"when": [
            {"key": "source.namespace", "values": ["shop"]},
            {"key": "destination.port", "values": ["81"]}]}]}),
            c(80),
            false,
        ),
        (
            "from, to and when together",
            json!({"rules": [{
            "from": [{"source": {"namespaces": ["shop"]}}],
            "to": [{"operation": {"ports": ["80"]}}],
            "when": [{"key": "source.ip", "values": ["10.1.0.5"]}]}]}),
            c(80),
            true,
        ),
        (
            "any to entry",
            json!({"rules": [{"to": [
            {"operation": {"ports": ["81"]}}, {"operation": {"ports": ["80"]}}]}]}),
            c(80),
            true,
        ),
    ];
    for (name, spec, connection, want) in table {
        assert_eq!(allowed_by(spec, &connection), want, "{name}");
    }
}

/// `spec` as a DENY policy next to an allow-all: is `connection` denied?
fn denied_by(spec: Value, connection: &Connection) -> bool {
    let mut spec = spec;
    spec["action"] = json!("DENY");
    let engine = engine(&vec![
        ("shop", "allow-all", json!({"rules": [{}]})),
        ("shop", "deny", spec),
    ]);
    !engine
        .for_workload("shop", &labels(&[]))
        .decide(connection)
        .allowed
}

#[test]
fn http_only_fields_never_allow_and_always_narrow_deny() {
    let c = from_sa("shop", "client", 80);
    let other = from_sa("web", "client", 80);
    let table: Vec<(&str, Value)> = vec![
        ("methods", operation(json!({"methods": ["GET"]}))),
        ("paths", operation(json!({"paths": ["/admin"]}))),
        ("hosts", operation(json!({"hosts": ["shop.example"]}))),
        ("notMethods", operation(json!({"notMethods": ["DELETE"]}))),
        (
            "requestPrincipals",
            source(json!({"requestPrincipals": ["*"]})),
        ),
        (
            "request.headers",
            json!({"rules": [{"when": [{"key": "request.headers[x-user]", "values": ["alice"]}]}]}),
        ),
    ];
    for (name, spec) in table {
        // ALLOW: the rule never matches, so the workload is closed.
        assert!(
            !allowed_by(spec.clone(), &c),
            "{name}: ALLOW must not match"
        );
        // DENY: the HTTP field is dropped, so the rule matches every connection.
        assert!(denied_by(spec, &c), "{name}: DENY must match");
    }
    // In DENY the remaining L4 fields still narrow the rule.
    let spec = json!({"rules": [{"from": [{"source": {"namespaces": ["shop"]}}], "to": [{"operation": {"methods": ["POST"]}}]}]});
    assert!(denied_by(spec.clone(), &c));
    assert!(!denied_by(spec, &other));
    // In ALLOW a rule with an HTTP field is dropped, but other rules still count.
    let spec = json!({"rules": [
        {"to": [{"operation": {"methods": ["GET"]}}]},
        {"from": [{"source": {"namespaces": ["shop"]}}]}]});
    assert!(allowed_by(spec.clone(), &c));
    assert!(!allowed_by(spec, &other));
}
