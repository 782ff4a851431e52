//! Compiled matchers: each field of a rule becomes one [`Check`] over one connection attribute,
//! with its values parsed once (strings into exact/prefix/suffix, addresses into CIDRs, ports
//! into numbers), so a decision never looks at YAML.

#[cfg(test)]
use std::net::IpAddr;

use crate::init::Cidr;

#[cfg(test)]
use super::Connection;

/// One string pattern, Istio style: `*` alone is "present", `abc*` a prefix, `*abc` a suffix,
/// anything else exact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StrMatch {
    /// Any non-empty value.
    Present,
    /// Exactly this value.
    Exact(Box<str>),
    /// Starts with this.
    Prefix(Box<str>),
    /// Ends with this.
    Suffix(Box<str>),
}

impl StrMatch {
    /// Parses one pattern.
    pub(crate) fn parse(pattern: &str) -> StrMatch {
        if pattern == "*" {
            StrMatch::Present
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            StrMatch::Prefix(prefix.into())
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            StrMatch::Suffix(suffix.into())
        } else {
            StrMatch::Exact(pattern.into())
        }
    }

    /// True when `value` fits the pattern.
    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            StrMatch::Present => !value.is_empty(),
            StrMatch::Exact(v) => **v == *value,
            StrMatch::Prefix(p) => value.starts_with(&**p),
            StrMatch::Suffix(s) => value.ends_with(&**s),
        }
    }
}

/// The connection attribute a check reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attr {
    /// The peer's identity without `spiffe://`; absent for plaintext.
    Principal,
    /// The namespace in the peer's identity; absent for plaintext.
    Namespace,
    /// `<namespace>/<service account>` from the peer's identity; absent for plaintext.
    ServiceAccount,
    /// The peer address (also `remoteIpBlocks` / `remote.ip`: no PROXY header is read).
    SourceIp,
    /// The address the connection arrived on.
    DestinationIp,
    /// The workload port the connection arrived on.
    DestinationPort,
    /// The TLS server name the peer asked for; absent for plaintext.
    Sni,
}

/// The values of a check, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Values {
    /// String patterns.
    Strings(Vec<StrMatch>),
    /// Address ranges.
    Cidrs(Vec<Cidr>),
    /// Port numbers.
    Ports(Vec<u16>),
}

/// "The attribute matches one of the values" (or, negated, "matches none of them"). A missing
/// attribute (no principal on a plaintext connection) matches no value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Check {
    pub(crate) attr: Attr,
    pub(crate) values: Values,
    pub(crate) negate: bool,
}

/// The straightforward reading of a check, kept as the reference that the flattened checks of
/// the decision index (`index`) are tested against.
#[cfg(test)]
impl Check {
    /// True when the connection satisfies the check.
    pub(crate) fn matches(&self, c: &Connection) -> bool {
        self.any_value_matches(c) != self.negate
    }

    fn any_value_matches(&self, c: &Connection) -> bool {
        match &self.values {
            Values::Strings(patterns) => {
                let value = match self.attr {
                    Attr::Principal => c.principal.as_deref(),
                    Attr::Namespace => c.namespace.as_deref(),
                    Attr::ServiceAccount => c.service_account.as_deref(),
                    Attr::Sni => c.sni.as_deref(),
                    Attr::SourceIp | Attr::DestinationIp | Attr::DestinationPort => None,
                };
                value.is_some_and(|v| patterns.iter().any(|p| p.matches(v)))
            }
            Values::Cidrs(cidrs) => {
                let ip = match self.attr {
                    Attr::SourceIp => c.source_ip,
                    Attr::DestinationIp => c.destination_ip,
                    _ => return false,
                };
                cidrs.iter().any(|cidr| cidr_contains(cidr, ip))
            }
            Values::Ports(ports) => {
                self.attr == Attr::DestinationPort && ports.contains(&c.destination_port)
            }
        }
    }
}

/// True when `ip` is inside `cidr` (the reference for the index's precomputed ranges). An IPv4-mapped IPv6 peer address is compared as IPv4, so a
/// dual-stack listener cannot be used to slip past an IPv4 block. A prefix longer than the
/// address (which `Cidr`'s parser refuses, but a `Cidr` built field by field may carry) counts
/// as the whole address rather than underflowing.
#[cfg(test)]
pub(crate) fn cidr_contains(cidr: &Cidr, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match (cidr.addr, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let mask = u32::MAX
                .checked_shl(32u32.saturating_sub(u32::from(cidr.prefix)))
                .unwrap_or(0);
            u32::from(ip) & mask == u32::from(net)
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let mask = u128::MAX
                .checked_shl(128u32.saturating_sub(u32::from(cidr.prefix)))
                .unwrap_or(0);
            u128::from(ip) & mask == u128::from(net)
        }
        _ => false,
    }
}

/// Parses a port list written as decimal strings (`"8080"`); `None` if any is not a port.
pub(crate) fn parse_ports(values: &[String]) -> Option<Vec<u16>> {
    values
        .iter()
        .map(|v| {
            if v.is_empty() || v.len() > 5 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            v.parse::<u16>().ok().filter(|p| *p != 0)
        })
        .collect()
}

/// Parses addresses or CIDRs; `None` if any is neither.
pub(crate) fn parse_cidrs(values: &[String]) -> Option<Vec<Cidr>> {
    values.iter().map(|v| v.parse::<Cidr>().ok()).collect()
}
