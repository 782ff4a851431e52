//! The decision index against the plain scan: prefix tables against brute force, address
//! ranges against `cidr_contains`, where rules are filed, and random rule sets (every attribute,
//! every pattern kind, negations, address blocks of both families, mismatched value kinds) whose
//! indexed decision must equal `scan_decide` for every connection tried.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use proptest::prelude::*;

use super::super::compile::{CompiledPolicy, CompiledRule};
use super::super::matcher::{Attr, Check, StrMatch, Values, cidr_contains};
use super::super::prefix::Key;
use super::super::{Connection, WorkloadAuthz, scan_decide};
use super::*;
use crate::api::AuthorizationAction;
use crate::policy::model::{ObjectRef, PolicyKind};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn cidr(addr: &str, prefix: u8) -> Cidr {
    Cidr {
        addr: ip(addr),
        prefix,
    }
}

/// The ids `find` reports, as a set.
fn found<K: Key>(table: &PrefixTable<K>, probe: &K::Probe) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    table.find(probe, &mut |ids: &[u32]| out.extend(ids.iter().copied()));
    out
}

#[test]
fn a_prefix_table_finds_every_prefix_of_a_probe_and_nothing_else() {
    let keys = ["", "a", "ab", "abc", "abd", "b", "ba", "c"];
    let table = PrefixTable::new(
        keys.iter()
            .enumerate()
            .map(|(i, k)| (Bytes(k.as_bytes().into()), vec![i as u32]))
            .collect(),
    );
    let cases: [(&str, &[u32]); 8] = [
        ("", &[0]),
        ("a", &[0, 1]),
        ("abcz", &[0, 1, 2, 3]),
        ("abz", &[0, 1, 2]),
        ("abd", &[0, 1, 2, 4]),
        ("bb", &[0, 5]),
        ("c", &[0, 7]),
        ("d", &[0]),
    ];
    for (probe, want) in cases {
        let want: BTreeSet<u32> = want.iter().copied().collect();
        assert_eq!(found(&table, probe.as_bytes()), want, "probe {probe:?}");
    }
    let empty: PrefixTable<Bytes> = PrefixTable::default();
    assert!(found(&empty, b"abc").is_empty());
}

#[test]
fn an_address_range_matches_as_cidr_contains_does() {
    let nets = [
        cidr("10.1.0.0", 16),
        cidr("10.1.0.5", 32),
        cidr("10.1.0.5", 16), // host bits set: matches nothing
        cidr("0.0.0.0", 0),
        cidr("10.1.0.5", 40), // longer than the address: the whole address
        cidr("fd00::", 8),
        cidr("::", 0),
        cidr("fd00::1", 128),
        cidr("fd00::1", 200),
        cidr("::ffff:10.1.0.0", 112), // an IPv4-mapped range never sees a mapped peer
    ];
    let peers = [
        "10.1.0.5",
        "10.1.9.9",
        "10.2.0.1",
        "::ffff:10.1.0.5",
        "fd00::1",
        "fd00::2",
        "fe80::1",
        "0.0.0.0",
    ];
    let mut matched = 0;
    for c in &nets {
        for p in peers {
            let want = cidr_contains(c, ip(p));
            matched += usize::from(want);
            assert_eq!(Net::new(c).contains(Addr::new(ip(p))), want, "{c:?} {p}");
        }
    }
    assert!(matched > 10, "the table exercises matches too ({matched})");
}

fn check(attr: Attr, values: Values, negate: bool) -> Check {
    Check {
        attr,
        values,
        negate,
    }
}

fn strs(patterns: &[&str]) -> Values {
    Values::Strings(patterns.iter().map(|p| StrMatch::parse(p)).collect())
}

fn rule(from: Vec<Vec<Check>>, to: Vec<Vec<Check>>, when: Vec<Check>) -> CompiledRule {
    CompiledRule {
        from,
        to,
        when,
        never: false,
    }
}

#[test]
fn each_rule_is_filed_under_the_most_selective_thing_it_requires() {
    let principal = |p: &[&str]| check(Attr::Principal, strs(p), false);
    let ns = |p: &[&str]| check(Attr::Namespace, strs(p), false);
    let block = || {
        check(
            Attr::SourceIp,
            Values::Cidrs(vec![cidr("10.200.0.0", 24)]),
            false,
        )
    };
    let port = || check(Attr::DestinationPort, Values::Ports(vec![8080]), false);
    let rules = vec![
        // 0: exact principal, over a namespace and a port in the same rule
        rule(
            vec![vec![ns(&["a"]), principal(&["td/ns/a/sa/x"])]],
            vec![vec![port()]],
            vec![],
        ),
        // 1: principal prefix, from either alternative
        rule(
            vec![
                vec![principal(&["td/ns/t-*"])],
                vec![principal(&["td/ns/u-*"])],
            ],
            vec![],
            vec![],
        ),
        // 2: principal suffix
        rule(vec![vec![principal(&["*/sa/admin"])]], vec![], vec![]),
        // 3: address block only
        rule(vec![vec![block()]], vec![], vec![]),
        // 4: a `when` condition on the namespace
        rule(vec![], vec![], vec![ns(&["b"])]),
        // 5: port only
        rule(vec![], vec![vec![port()]], vec![]),
        // 6: one alternative has no principal: filed by the port of `to`
        rule(
            vec![vec![principal(&["td/ns/a/sa/x"])], vec![block()]],
            vec![vec![port()]],
            vec![],
        ),
        // 7: only negations: nothing to index by
        rule(
            vec![vec![check(Attr::Namespace, strs(&["a"]), true)]],
            vec![],
            vec![],
        ),
        // 8: present only
        rule(vec![vec![principal(&["*"])]], vec![], vec![]),
    ];
    let set = RuleSet::new(&[(0, &rules)]);
    let p = &set.text[0];
    assert_eq!(p.exact.get("td/ns/a/sa/x").map(|v| &**v), Some(&[0u32][..]));
    assert_eq!(found(&p.prefix, b"td/ns/t-1/sa/s"), BTreeSet::from([1]));
    assert_eq!(found(&p.prefix, b"td/ns/u-1/sa/s"), BTreeSet::from([1]));
    assert_eq!(found(&p.suffix, b"td/ns/z/sa/admin"), BTreeSet::from([2]));
    assert_eq!(p.present, vec![8]);
    let key = Addr::new(ip("10.200.0.7")).key();
    assert_eq!(found(&set.addrs[0].v4, &key), BTreeSet::from([3]));
    assert_eq!(set.text[2].exact.get("b").map(|v| &**v), Some(&[4u32][..]));
    assert_eq!(set.by_port.get(&8080).map(|v| &**v), Some(&[5u32, 6][..]));
    assert_eq!(set.rest, vec![7]);
}

// Random rule sets against the scan. Small pools of values make collisions (and so matches,
// shared prefixes, first-match races between buckets) frequent.

const TEXT: [&str; 10] = [
    "td/ns/a/sa/x",
    "td/ns/ab/sa/x",
    "td/ns/a/sa/y",
    "other/ns/a/sa/x",
    "a",
    "ab",
    "b",
    "a/x",
    "ab/x",
    "",
];
const IPS: [&str; 9] = [
    "10.1.0.5",
    "10.1.2.3",
    "10.2.0.1",
    "192.168.0.1",
    "fd00::1",
    "fd00:1::5",
    "::ffff:10.1.0.5",
    "::1",
    "0.0.0.0",
];
const PORTS: [u16; 3] = [80, 443, 8080];
const ATTRS: [Attr; 7] = [
    Attr::Principal,
    Attr::Namespace,
    Attr::ServiceAccount,
    Attr::SourceIp,
    Attr::DestinationIp,
    Attr::DestinationPort,
    Attr::Sni,
];

fn pattern() -> impl Strategy<Value = StrMatch> {
    (0..TEXT.len(), 0..4usize, 0..16usize).prop_map(|(t, kind, cut)| {
        let s = TEXT[t];
        let cut = cut.min(s.len());
        match kind {
            0 => StrMatch::Exact(s.into()),
            1 => StrMatch::Prefix(s[..cut].into()),
            2 => StrMatch::Suffix(s[s.len() - cut..].into()),
            _ => StrMatch::Present,
        }
    })
}

fn net() -> impl Strategy<Value = Cidr> {
    (0..IPS.len(), 0..140u8, any::<bool>()).prop_map(|(i, prefix, clear)| {
        let addr = ip(IPS[i]);
        let width = if addr.is_ipv4() { 32 } else { 128 };
        // Mostly sensible lengths, sometimes longer than the address.
        let prefix = if prefix < 120 {
            prefix % (width + 1)
        } else {
            prefix
        };
        let addr = match (addr, clear) {
            (IpAddr::V4(a), true) => {
                let len = u32::from(prefix.min(32));
                let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            (IpAddr::V6(a), true) => {
                let len = u32::from(prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
            (a, false) => a,
        };
        Cidr { addr, prefix }
    })
}

fn values_for(attr: Attr, kind: usize) -> BoxedStrategy<Values> {
    // One time in eight the value kind does not fit the attribute (as a hand-built or wire
    // rule might have): such a check matches nothing, and the index must not trust it.
    let kind = match (kind, attr) {
        (7, _) => 0,
        (6, _) => 1,
        (_, Attr::SourceIp | Attr::DestinationIp) => 1,
        (_, Attr::DestinationPort) => 2,
        _ => 0,
    };
    match kind {
        0 => prop::collection::vec(pattern(), 0..3)
            .prop_map(Values::Strings)
            .boxed(),
        1 => prop::collection::vec(net(), 0..3)
            .prop_map(Values::Cidrs)
            .boxed(),
        _ => prop::collection::vec(prop::sample::select(&PORTS[..]), 0..3)
            .prop_map(Values::Ports)
            .boxed(),
    }
}

fn a_check() -> impl Strategy<Value = Check> {
    (0..ATTRS.len(), 0..8usize, 0..4usize).prop_flat_map(|(a, kind, negate)| {
        let attr = ATTRS[a];
        values_for(attr, kind).prop_map(move |values| check(attr, values, negate == 0))
    })
}

fn a_rule() -> impl Strategy<Value = CompiledRule> {
    let clauses = || prop::collection::vec(prop::collection::vec(a_check(), 0..3), 0..3);
    (
        clauses(),
        clauses(),
        prop::collection::vec(a_check(), 0..2),
        0..10usize,
    )
        .prop_map(|(from, to, when, never)| CompiledRule {
            from,
            to,
            when,
            never: never == 0,
        })
}

fn a_policy() -> impl Strategy<Value = (usize, Vec<CompiledRule>)> {
    (0..40usize, prop::collection::vec(a_rule(), 0..4))
}

fn policy(i: usize, action: usize, rules: Vec<CompiledRule>) -> Arc<CompiledPolicy> {
    let action = match action {
        0..18 => AuthorizationAction::Allow,
        18..36 => AuthorizationAction::Deny,
        36..39 => AuthorizationAction::Audit,
        _ => AuthorizationAction::Custom,
    };
    Arc::new(CompiledPolicy {
        object: ObjectRef {
            kind: PolicyKind::AuthorizationPolicy,
            namespace: "ns".into(),
            name: format!("p{i}"),
        },
        action,
        rules,
        diagnostics: Vec::new(),
    })
}

fn a_connection() -> impl Strategy<Value = Connection> {
    let text = || prop::option::of(prop::sample::select(&TEXT[..]));
    (
        (text(), text(), text(), text()),
        (0..IPS.len(), 0..IPS.len()),
        prop::sample::select(&PORTS[..]),
    )
        .prop_map(
            |((principal, namespace, sa, sni), (s, d), port)| Connection {
                principal: principal.map(String::from),
                namespace: namespace.map(String::from),
                service_account: sa.map(String::from),
                source_ip: ip(IPS[s]),
                destination_ip: ip(IPS[d]),
                destination_port: port,
                sni: sni.map(String::from),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The indexed decision equals checking every rule of every policy in order, for random
    /// rules over every attribute and pattern kind.
    #[test]
    fn indexed_decision_equals_the_scan_for_random_rules(
        shapes in prop::collection::vec(a_policy(), 0..10),
        connections in prop::collection::vec(a_connection(), 16),
    ) {
        let policies: Vec<Arc<CompiledPolicy>> = shapes
            .into_iter()
            .enumerate()
            .map(|(i, (action, rules))| policy(i, action, rules))
            .collect();
        let authz = WorkloadAuthz::new(policies.clone());
        for c in &connections {
            prop_assert_eq!(authz.decide(c), scan_decide(&policies, c), "{:?}", c);
        }
    }

    /// A prefix table over bytes, reversed bytes or bits finds exactly the keys that are
    /// prefixes (suffixes, for reversed) of the probe.
    #[test]
    fn prefix_tables_equal_brute_force(
        keys in prop::collection::vec("[ab]{0,5}", 0..12),
        bit_keys in prop::collection::vec((any::<u8>(), 0..=8u8), 0..12),
        probe in "[ab]{0,6}",
        bit_probe in any::<u8>(),
    ) {
        let ids = |keys: &[String]| -> BTreeMap<String, Vec<u32>> {
            let mut m: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            for (i, k) in keys.iter().enumerate() {
                m.entry(k.clone()).or_default().push(i as u32);
            }
            m
        };
        let want = |keep: &dyn Fn(&str) -> bool| -> BTreeSet<u32> {
            ids(&keys).into_iter().filter(|(k, _)| keep(k)).flat_map(|(_, v)| v).collect()
        };
        let fwd = PrefixTable::new(
            ids(&keys).into_iter().map(|(k, v)| (Bytes(k.into_bytes().into()), v)).collect(),
        );
        prop_assert_eq!(found(&fwd, probe.as_bytes()), want(&|k| probe.starts_with(k)));
        let rev = PrefixTable::new(
            ids(&keys)
                .into_iter()
                .map(|(k, v)| (RevBytes(k.bytes().rev().collect()), v))
                .collect(),
        );
        prop_assert_eq!(found(&rev, probe.as_bytes()), want(&|k| probe.ends_with(k)));

        let mut bits: BTreeMap<Bits, Vec<u32>> = BTreeMap::new();
        let mut brute = BTreeSet::new();
        let probe_bits = u128::from(bit_probe) << 120;
        for (i, (b, len)) in bit_keys.iter().enumerate() {
            let key = Bits { bits: (u128::from(*b) << 120) & left_mask(*len), len: *len };
            bits.entry(key).or_default().push(i as u32);
            if probe_bits & left_mask(*len) == key.bits {
                brute.insert(i as u32);
            }
        }
        let table = PrefixTable::new(bits);
        prop_assert_eq!(found(&table, &Bits { bits: probe_bits, len: 128 }), brute);
    }
}
