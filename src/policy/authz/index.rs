//! The decision index of one action's rules (DENY or ALLOW) for one workload.
//!
//! Two things keep a decision cheap when a thousand policies apply. The rules are flattened:
//! every check of every rule sits in one contiguous array, its values in typed pools (address
//! ranges as precomputed masks), so matching a rule walks arrays rather than nested `Vec`s.
//! And each rule is filed under one attribute it cannot match without — an exact principal, a
//! principal prefix or suffix, a namespace, a source address block, a port… — so a decision only
//! looks at the rules whose key the connection has. The index only proposes candidates: each is
//! checked in full, and the first matching rule in policy order decides, exactly as checking
//! every rule in order would (`scan_decide` is the reference the tests hold this to).

use std::collections::{BTreeMap, HashMap};

/// The exact-value tables: keys are the policies' own values, and a lookup is one per
/// attribute per decision, so a fast (seeded, not SipHash) hasher is worth it: SipHash was a
/// fifth of a decision's time in the profile.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::net::IpAddr;

use crate::init::Cidr;

use super::compile::CompiledRule;
use super::matcher::{Attr, Check, StrMatch, Values};
use super::prefix::{Bits, Bytes, PrefixTable, RevBytes};
use super::{Connection, RuleRef};

/// A position in one of the arrays below. Policies are bounded in size long before 2^32
/// entries, so saturating here cannot happen in practice; it keeps the arrays compact.
pub(super) fn at(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// An address as decisions compare it: left-aligned in 128 bits, with an IPv4-mapped IPv6 peer
/// taken as IPv4, so a dual-stack listener cannot be used to slip past an IPv4 block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Addr {
    bits: u128,
    v4: bool,
}

impl Addr {
    pub(super) fn new(ip: IpAddr) -> Addr {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => Addr {
                bits: u128::from(u32::from(v4)) << 96,
                v4: true,
            },
            IpAddr::V6(v6) => Addr {
                bits: u128::from(v6),
                v4: false,
            },
        }
    }

    fn key(self) -> Bits {
        Bits {
            bits: self.bits,
            len: if self.v4 { 32 } else { 128 },
        }
    }
}

/// An address range, precomputed so that a test is one AND and one compare. The network bits
/// are kept as given: a range with host bits set matches nothing, as `cidr_contains` says.
#[derive(Clone, Copy, Debug)]
pub(super) struct Net {
    bits: u128,
    mask: u128,
    v4: bool,
}

impl Net {
    pub(super) fn new(cidr: &Cidr) -> Net {
        let (bits, v4, width) = match cidr.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, true, 32),
            IpAddr::V6(a) => (u128::from(a), false, 128),
        };
        Net {
            bits,
            mask: left_mask(cidr.prefix.min(width)),
            v4,
        }
    }

    pub(super) fn contains(&self, a: Addr) -> bool {
        self.v4 == a.v4 && a.bits & self.mask == self.bits
    }

    /// The range as a bit string (host bits cleared), for the prefix table.
    fn key(&self) -> Bits {
        Bits {
            bits: self.bits & self.mask,
            len: u8::try_from(self.mask.count_ones()).unwrap_or(128),
        }
    }
}

/// The `len` leading bits set (`len` at most 128).
fn left_mask(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

/// What a decision reads of a connection, taken once per decision.
pub(super) struct Facts<'a> {
    text: [Option<&'a str>; 4],
    src: Addr,
    dst: Addr,
    port: u16,
}

/// The string attributes, in the order of [`Facts::text`] and [`RuleSet::text`].
const TEXT_ATTRS: [Attr; 4] = [
    Attr::Principal,
    Attr::ServiceAccount,
    Attr::Namespace,
    Attr::Sni,
];

/// The address attributes, in the order of [`RuleSet::addrs`].
const ADDR_ATTRS: [Attr; 2] = [Attr::SourceIp, Attr::DestinationIp];

impl<'a> Facts<'a> {
    pub(super) fn new(c: &'a Connection) -> Facts<'a> {
        Facts {
            text: [
                c.principal.as_deref(),
                c.service_account.as_deref(),
                c.namespace.as_deref(),
                c.sni.as_deref(),
            ],
            src: Addr::new(c.source_ip),
            dst: Addr::new(c.destination_ip),
            port: c.destination_port,
        }
    }

    fn text(&self, attr: Attr) -> Option<&'a str> {
        match attr {
            Attr::Principal => self.text[0],
            Attr::ServiceAccount => self.text[1],
            Attr::Namespace => self.text[2],
            Attr::Sni => self.text[3],
            Attr::SourceIp | Attr::DestinationIp | Attr::DestinationPort => None,
        }
    }

    fn addr(&self, attr: Attr) -> Option<Addr> {
        match attr {
            Attr::SourceIp => Some(self.src),
            Attr::DestinationIp => Some(self.dst),
            _ => None,
        }
    }
}

/// A range of one of a [`RuleSet`]'s arrays.
#[derive(Clone, Copy, Debug, Default)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn of<T>(items: &[T], start: usize) -> Span {
        Span {
            start: at(start),
            end: at(items.len()),
        }
    }

    fn get<T>(self, items: &[T]) -> &[T] {
        items
            .get(self.start as usize..self.end as usize)
            .unwrap_or(&[])
    }
}

/// Which pool a flattened check's values are in.
#[derive(Clone, Copy, Debug)]
enum Pool {
    Strs,
    Nets,
    Ports,
}

/// A [`Check`] with its values moved into one of the pools.
#[derive(Clone, Copy, Debug)]
struct FlatCheck {
    attr: Attr,
    negate: bool,
    pool: Pool,
    values: Span,
}

/// A [`CompiledRule`] flattened: `from` and `to` are spans of clauses (each a span of checks),
/// `when` a span of checks.
#[derive(Clone, Copy, Debug)]
struct FlatRule {
    from: Span,
    to: Span,
    when: Span,
}

/// The rules of one action, flattened and indexed. Rule ids are positions in `refs`, which
/// follows policy order, so the smallest matching id is the first matching rule.
#[derive(Clone, Debug, Default)]
pub(super) struct RuleSet {
    refs: Vec<RuleRef>,
    rules: Vec<FlatRule>,
    clauses: Vec<Span>,
    checks: Vec<FlatCheck>,
    strs: Vec<StrMatch>,
    nets: Vec<Net>,
    ports: Vec<u16>,
    /// Rules by a string attribute they require, in [`TEXT_ATTRS`] order.
    text: [TextIndex; 4],
    /// Rules by an address block they require, in [`ADDR_ATTRS`] order.
    addrs: [AddrIndex; 2],
    /// Rules by a destination port they require.
    by_port: Map<u16, Box<[u32]>>,
    /// Rules with nothing to index by: checked on every decision.
    rest: Vec<u32>,
}

impl RuleSet {
    /// Flattens and indexes `policies` (position in the workload's list, rules), in order.
    /// Rules that can never match (`never`) are left out.
    pub(super) fn new(policies: &[(u32, &[CompiledRule])]) -> RuleSet {
        let mut set = RuleSet::default();
        let mut build = Build::default();
        for &(policy, rules) in policies {
            for (r, rule) in rules.iter().enumerate() {
                if rule.never {
                    continue;
                }
                let id = at(set.refs.len());
                set.refs.push(RuleRef {
                    policy,
                    rule: Some(at(r)),
                });
                set.flatten(rule);
                build.file(id, rule);
            }
        }
        build.finish(&mut set);
        set
    }

    fn flatten(&mut self, rule: &CompiledRule) {
        let from = self.flatten_clauses(&rule.from);
        let to = self.flatten_clauses(&rule.to);
        let start = self.checks.len();
        for check in &rule.when {
            self.flatten_check(check);
        }
        let when = Span::of(&self.checks, start);
        self.rules.push(FlatRule { from, to, when });
    }

    fn flatten_clauses(&mut self, clauses: &[Vec<Check>]) -> Span {
        let spans: Vec<Span> = clauses
            .iter()
            .map(|clause| {
                let start = self.checks.len();
                for check in clause {
                    self.flatten_check(check);
                }
                Span::of(&self.checks, start)
            })
            .collect();
        let start = self.clauses.len();
        self.clauses.extend(spans);
        Span::of(&self.clauses, start)
    }

    fn flatten_check(&mut self, check: &Check) {
        let (pool, values) = match &check.values {
            Values::Strings(v) => {
                let start = self.strs.len();
                self.strs.extend(v.iter().cloned());
                (Pool::Strs, Span::of(&self.strs, start))
            }
            Values::Cidrs(v) => {
                let start = self.nets.len();
                self.nets.extend(v.iter().map(Net::new));
                (Pool::Nets, Span::of(&self.nets, start))
            }
            Values::Ports(v) => {
                let start = self.ports.len();
                self.ports.extend_from_slice(v);
                (Pool::Ports, Span::of(&self.ports, start))
            }
        };
        self.checks.push(FlatCheck {
            attr: check.attr,
            negate: check.negate,
            pool,
            values,
        });
    }

    /// The first rule (in policy order) that the connection matches.
    pub(super) fn first_match(&self, f: &Facts<'_>) -> Option<RuleRef> {
        let mut best: Option<u32> = None;
        let mut consider = |ids: &[u32]| {
            for &id in ids {
                if best.is_some_and(|b| id >= b) {
                    return;
                }
                if self.rule_matches(id, f) {
                    best = Some(id);
                    return;
                }
            }
        };
        for (index, attr) in self.text.iter().zip(TEXT_ATTRS) {
            index.candidates(f.text(attr), &mut consider);
        }
        for (index, attr) in self.addrs.iter().zip(ADDR_ATTRS) {
            if let Some(a) = f.addr(attr) {
                index.candidates(a, &mut consider);
            }
        }
        if !self.by_port.is_empty()
            && let Some(ids) = self.by_port.get(&f.port)
        {
            consider(ids);
        }
        consider(&self.rest);
        best.and_then(|id| self.refs.get(id as usize)).copied()
    }

    fn rule_matches(&self, id: u32, f: &Facts<'_>) -> bool {
        let Some(rule) = self.rules.get(id as usize) else {
            return false;
        };
        let any = |clauses: Span| {
            let clauses = clauses.get(&self.clauses);
            clauses.is_empty() || clauses.iter().any(|&c| self.all(c, f))
        };
        any(rule.from) && any(rule.to) && self.all(rule.when, f)
    }

    fn all(&self, checks: Span, f: &Facts<'_>) -> bool {
        checks.get(&self.checks).iter().all(|k| self.check(k, f))
    }

    /// One check, with the semantics of [`Check::matches`].
    fn check(&self, k: &FlatCheck, f: &Facts<'_>) -> bool {
        let any = match k.pool {
            Pool::Strs => f
                .text(k.attr)
                .is_some_and(|v| k.values.get(&self.strs).iter().any(|m| m.matches(v))),
            Pool::Nets => f
                .addr(k.attr)
                .is_some_and(|a| k.values.get(&self.nets).iter().any(|n| n.contains(a))),
            Pool::Ports => {
                k.attr == Attr::DestinationPort && k.values.get(&self.ports).contains(&f.port)
            }
        };
        any != k.negate
    }
}

/// Rules by the values of one string attribute they require.
#[derive(Clone, Debug, Default)]
struct TextIndex {
    exact: Map<Box<str>, Box<[u32]>>,
    prefix: PrefixTable<Bytes>,
    /// Suffixes, stored reversed: a suffix of a value is a prefix of the reversed value.
    suffix: PrefixTable<RevBytes>,
    /// Rules that require only that the attribute is present (`*`).
    present: Vec<u32>,
}

impl TextIndex {
    fn candidates(&self, value: Option<&str>, consider: &mut impl FnMut(&[u32])) {
        let Some(v) = value else {
            return;
        };
        if !self.exact.is_empty()
            && let Some(ids) = self.exact.get(v)
        {
            consider(ids);
        }
        self.prefix.find(v.as_bytes(), consider);
        self.suffix.find(v.as_bytes(), consider);
        if !v.is_empty() {
            consider(&self.present);
        }
    }
}

/// Rules by an address block they require, one prefix table per family.
#[derive(Clone, Debug, Default)]
struct AddrIndex {
    v4: PrefixTable<Bits>,
    v6: PrefixTable<Bits>,
}

impl AddrIndex {
    fn candidates(&self, a: Addr, consider: &mut impl FnMut(&[u32])) {
        let table = if a.v4 { &self.v4 } else { &self.v6 };
        table.find(&a.key(), consider);
    }
}

/// The index while it is built: ordered maps, turned into tables by [`Build::finish`].
#[derive(Default)]
struct Build {
    exact: [BTreeMap<Box<str>, Vec<u32>>; 4],
    prefix: [BTreeMap<Bytes, Vec<u32>>; 4],
    suffix: [BTreeMap<RevBytes, Vec<u32>>; 4],
    present: [Vec<u32>; 4],
    v4: [BTreeMap<Bits, Vec<u32>>; 2],
    v6: [BTreeMap<Bits, Vec<u32>>; 2],
    ports: Map<u16, Vec<u32>>,
    rest: Vec<u32>,
}

/// The attributes a rule may be filed under, most selective kinds first on equal scores.
const INDEXED: [Attr; 7] = [
    Attr::Principal,
    Attr::ServiceAccount,
    Attr::Namespace,
    Attr::SourceIp,
    Attr::DestinationPort,
    Attr::Sni,
    Attr::DestinationIp,
];

impl Build {
    /// Files rule `id` under the most selective attribute it requires, or in `rest`.
    fn file(&mut self, id: u32, rule: &CompiledRule) {
        let mut best: Option<(u8, Attr, Vec<&Values>)> = None;
        for attr in INDEXED {
            if let Some(values) = required(rule, attr) {
                let s = score(&values);
                if best.as_ref().is_none_or(|(b, _, _)| s > *b) {
                    best = Some((s, attr, values));
                }
            }
        }
        let Some((_, attr, values)) = best else {
            self.rest.push(id);
            return;
        };
        let text = TEXT_ATTRS.iter().position(|a| *a == attr);
        let addr = ADDR_ATTRS.iter().position(|a| *a == attr);
        for v in values {
            match (v, text, addr) {
                (Values::Strings(patterns), Some(t), _) => {
                    for p in patterns {
                        let bucket = match p {
                            StrMatch::Exact(s) => self.exact[t].entry(s.clone()).or_default(),
                            StrMatch::Prefix(s) => self.prefix[t]
                                .entry(Bytes(s.as_bytes().into()))
                                .or_default(),
                            StrMatch::Suffix(s) => self.suffix[t]
                                .entry(RevBytes(s.bytes().rev().collect()))
                                .or_default(),
                            StrMatch::Present => &mut self.present[t],
                        };
                        bucket.push(id);
                    }
                }
                (Values::Cidrs(cidrs), _, Some(a)) => {
                    for cidr in cidrs {
                        let net = Net::new(cidr);
                        let table = if net.v4 {
                            &mut self.v4[a]
                        } else {
                            &mut self.v6[a]
                        };
                        table.entry(net.key()).or_default().push(id);
                    }
                }
                (Values::Ports(ports), _, _) => {
                    for p in ports {
                        self.ports.entry(*p).or_default().push(id);
                    }
                }
                // `required` only returns values of the attribute's own kind.
                _ => {}
            }
        }
    }

    fn finish(self, set: &mut RuleSet) {
        let Build {
            exact,
            prefix,
            suffix,
            present,
            v4,
            v6,
            ports,
            rest,
        } = self;
        let mut parts = exact.into_iter().zip(prefix).zip(suffix).zip(present);
        for index in set.text.iter_mut() {
            let Some((((exact, prefix), suffix), mut present)) = parts.next() else {
                break;
            };
            present.dedup();
            *index = TextIndex {
                exact: exact.into_iter().map(|(k, v)| (k, dedup(v))).collect(),
                prefix: PrefixTable::new(prefix),
                suffix: PrefixTable::new(suffix),
                present,
            };
        }
        for ((index, v4), v6) in set.addrs.iter_mut().zip(v4).zip(v6) {
            *index = AddrIndex {
                v4: PrefixTable::new(v4),
                v6: PrefixTable::new(v6),
            };
        }
        set.by_port = ports.into_iter().map(|(k, v)| (k, dedup(v))).collect();
        set.rest = rest;
    }
}

fn dedup(mut ids: Vec<u32>) -> Box<[u32]> {
    ids.dedup();
    ids.into()
}

/// When a rule cannot match unless `attr` matches one of some values, those values: from a
/// positive `when` check on it, or from a positive check in every `from` (or every `to`)
/// alternative. Only checks whose values are of the attribute's own kind count.
fn required(rule: &CompiledRule, attr: Attr) -> Option<Vec<&Values>> {
    let positive = |k: &&Check| k.attr == attr && !k.negate && of_kind(k);
    if let Some(k) = rule.when.iter().find(positive) {
        return Some(vec![&k.values]);
    }
    [&rule.from, &rule.to]
        .into_iter()
        .filter(|clauses| !clauses.is_empty())
        .find_map(|clauses| {
            clauses
                .iter()
                .map(|clause| clause.iter().find(positive).map(|k| &k.values))
                .collect::<Option<Vec<_>>>()
        })
}

/// True when the check's values are of the kind its attribute is read as (a check whose are
/// not matches nothing, so it cannot serve as an index key).
fn of_kind(k: &Check) -> bool {
    let text = matches!(
        k.attr,
        Attr::Principal | Attr::Namespace | Attr::ServiceAccount | Attr::Sni
    );
    match &k.values {
        Values::Strings(_) => text,
        Values::Cidrs(_) => matches!(k.attr, Attr::SourceIp | Attr::DestinationIp),
        Values::Ports(_) => k.attr == Attr::DestinationPort,
    }
}

/// How few connections the values let through, roughly: exact strings 5, prefixes and suffixes
/// 4, address blocks 3, ports 2, anything that lets every present value through 1.
fn score(values: &[&Values]) -> u8 {
    let mut s = 5;
    for v in values {
        let worst = match v {
            Values::Strings(patterns) => patterns
                .iter()
                .map(|p| match p {
                    StrMatch::Exact(_) => 5,
                    StrMatch::Prefix(x) | StrMatch::Suffix(x) if !x.is_empty() => 4,
                    _ => 1,
                })
                .min()
                .unwrap_or(5),
            Values::Cidrs(cidrs) => {
                if cidrs.iter().any(|c| c.prefix == 0) {
                    1
                } else {
                    3
                }
            }
            Values::Ports(_) => 2,
        };
        s = s.min(worst);
    }
    s
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
