//! `palisade init`: the iptables rules that send a pod's TCP traffic through its proxy.
//!
//! [`rules`] turns [`Settings`] into an `iptables-restore` script (pure, unit-tested);
//! [`apply`] runs it against the current network namespace. The same value syntax is used by
//! the `traffic.palisade.dev/*` pod annotations, which the webhook validates with the parsers
//! here so a pod that would make `palisade init` fail is denied at admission instead.

pub mod apply;
pub mod rules;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The proxy's user and group: iptables skips traffic from sockets they own.
pub const PROXY_UID: u32 = 1337;
/// See [`PROXY_UID`].
pub const PROXY_GID: u32 = 1337;
/// The proxy's outbound capture port.
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// The proxy's inbound capture port.
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// The proxy's admin port (health, app-health probes, metrics).
pub const ADMIN_PORT: u16 = 15020;
/// Reserved for a second proxy health port (as Istio's 15021); never captured.
pub const HEALTH_PORT: u16 = 15021;
/// Ports of the proxy itself: never captured inbound.
pub const PROXY_PORTS: [u16; 4] = [
    OUTBOUND_CAPTURE_PORT,
    INBOUND_CAPTURE_PORT,
    ADMIN_PORT,
    HEALTH_PORT,
];
/// Most entries in one port or address list (bounds the rule set).
pub const MAX_LIST_ENTRIES: usize = 64;
/// Longest list value accepted (annotation or flag).
pub const MAX_LIST_CHARS: usize = 4096;

/// Why a port or address list is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("{0:?} is not a port number (1-65535)")]
    Port(String),
    #[error("{0:?} is not an IPv4 or IPv6 address or CIDR range")]
    Cidr(String),
    #[error("more than {MAX_LIST_ENTRIES} entries")]
    TooMany,
    #[error("longer than {MAX_LIST_CHARS} characters")]
    TooLong,
}

fn split_list(text: &str) -> Result<impl Iterator<Item = &str>, ListError> {
    if text.len() > MAX_LIST_CHARS {
        return Err(ListError::TooLong);
    }
    let items = text.split(',').map(str::trim).filter(|s| !s.is_empty());
    if items.clone().count() > MAX_LIST_ENTRIES {
        return Err(ListError::TooMany);
    }
    Ok(items)
}

/// Parses `"8080, 9090"` (empty = none); sorted, without duplicates.
pub fn parse_ports(text: &str) -> Result<Vec<u16>, ListError> {
    let mut ports = split_list(text)?
        .map(|s| match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(ListError::Port(s.to_string())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// An IP address family: each gets its own rule set and its own iptables front-end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `iptables`.
    V4,
    /// `ip6tables`.
    V6,
}

/// An IPv4 or IPv6 range; the address is stored with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    /// The network address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length: 0 to 32 for IPv4, 0 to 128 for IPv6.
    pub prefix: u8,
}

impl Cidr {
    /// The family of the range.
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl FromStr for Cidr {
    type Err = ListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ListError::Cidr(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                // `u8::from_str` accepts a leading `+`; a prefix is digits only.
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                (a, Some(p.parse::<u8>().map_err(|_| bad())?))
            }
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let addr_and_prefix = match addr {
            IpAddr::V4(v4) => {
                let prefix = prefix.unwrap_or(32);
                if prefix > 32 {
                    return Err(bad());
                }
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                (IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask)), prefix)
            }
            IpAddr::V6(v6) => {
                let prefix = prefix.unwrap_or(128);
                if prefix > 128 {
                    return Err(bad());
                }
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                (IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)), prefix)
            }
        };
        Ok(Self {
            addr: addr_and_prefix.0,
            prefix: addr_and_prefix.1,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parses `"10.0.0.0/8,192.168.1.1,fd00::/8"` (empty = none; IPv4 and IPv6 may be mixed);
/// sorted (IPv4 first), without duplicates.
pub fn parse_cidrs(text: &str) -> Result<Vec<Cidr>, ListError> {
    let mut cidrs = split_list(text)?
        .map(Cidr::from_str)
        .collect::<Result<Vec<_>, _>>()?;
    cidrs.sort_unstable();
    cidrs.dedup();
    Ok(cidrs)
}

/// Which outbound destinations are captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboundInclude {
    /// Everything (`*`, the default).
    All,
    /// Only these ranges (an empty list captures no outbound traffic).
    Ranges(Vec<Cidr>),
}

impl OutboundInclude {
    /// Parses `*` or a range list.
    pub fn parse(text: &str) -> Result<Self, ListError> {
        if text.trim() == "*" {
            Ok(Self::All)
        } else {
            parse_cidrs(text).map(Self::Ranges)
        }
    }
}

impl fmt::Display for OutboundInclude {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Ranges(r) => f.write_str(&join(r)),
        }
    }
}

/// Comma-joins a list in the syntax the parsers read back.
pub fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Everything that decides the rule set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub inbound_capture_port: u16,
    pub outbound_capture_port: u16,
    /// Inbound ports left alone (besides the proxy's own ports, which always are).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
    pub include_outbound: OutboundInclude,
    /// Outbound destinations left alone (wins over `include_outbound`).
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            proxy_uid: PROXY_UID,
            proxy_gid: PROXY_GID,
            inbound_capture_port: INBOUND_CAPTURE_PORT,
            outbound_capture_port: OUTBOUND_CAPTURE_PORT,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            include_outbound: OutboundInclude::All,
            exclude_outbound_cidrs: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_sorted_and_deduplicated() {
        assert_eq!(parse_ports(" 9090,8080,,9090 ").unwrap(), vec![8080, 9090]);
        assert_eq!(parse_ports("").unwrap(), Vec::<u16>::new());
        for bad in ["0", "65536", "http", "80-90", "-1"] {
            assert_eq!(parse_ports(bad), Err(ListError::Port(bad.into())), "{bad}");
        }
    }

    #[test]
    fn cidrs_parse_and_normalise() {
        let c = parse_cidrs("10.1.2.3/8, 192.168.0.1").unwrap();
        assert_eq!(join(&c), "10.0.0.0/8,192.168.0.1/32");
        assert_eq!(join(&parse_cidrs("0.0.0.0/0").unwrap()), "0.0.0.0/0");
        for bad in [
            "10.0.0.0/33",
            "10.0.0",
            "10.0.0.0/x",
            "*",
            "10.0.0.0/+8",
            "10.0.0.0/",
        ] {
            assert_eq!(parse_cidrs(bad), Err(ListError::Cidr(bad.into())), "{bad}");
        }
    }

    #[test]
    fn ipv6_cidrs_parse_and_normalise() {
        let c = parse_cidrs("fd00:1:2:ff::3/48, ::1, 2001:db8::/32").unwrap();
        assert_eq!(join(&c), "::1/128,2001:db8::/32,fd00:1:2::/48");
        assert!(c.iter().all(|c| c.family() == Family::V6));
        assert_eq!(join(&parse_cidrs("::/0").unwrap()), "::/0");
        // Host bits past a prefix that is not a multiple of 16.
        assert_eq!(
            join(&parse_cidrs("fd00:ffff::/17").unwrap()),
            "fd00:8000::/17"
        );
        assert_eq!(
            join(&parse_cidrs("fd00::1/128").unwrap()),
            "fd00::1/128",
            "/128 keeps every bit"
        );
        for bad in [
            "fd00::/129",
            "fd00::/300",
            "fd00:::1/64",
            "fd00::g/64",
            "[fd00::]/64",
            "fd00::/-1",
            "fe80::1%eth0",
        ] {
            let e = parse_cidrs(bad).unwrap_err();
            assert_eq!(e, ListError::Cidr(bad.into()));
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn mixed_lists_keep_both_families() {
        let c = parse_cidrs("fd00::/8,10.1.0.0/16,10.1.2.3/16,fd00::5/8").unwrap();
        assert_eq!(join(&c), "10.1.0.0/16,fd00::/8");
        assert_eq!(
            c.iter().map(Cidr::family).collect::<Vec<_>>(),
            [Family::V4, Family::V6]
        );
        // The first bad value is named, whatever the family of the good ones.
        assert_eq!(
            parse_cidrs("10.0.0.0/8,fd00::/129"),
            Err(ListError::Cidr("fd00::/129".into()))
        );
        // A v4 prefix bound is not applied to v6, nor the other way round.
        assert!(parse_cidrs("10.0.0.0/64").is_err());
        assert!(parse_cidrs("fd00::/64").is_ok());
    }

    #[test]
    fn cidr_lists_are_bounded() {
        let at_bound = (0..MAX_LIST_ENTRIES)
            .map(|i| format!("fd00:{i:x}::/32"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse_cidrs(&at_bound).unwrap().len(), MAX_LIST_ENTRIES);
        let over = format!("{at_bound},10.0.0.0/8");
        assert_eq!(parse_cidrs(&over), Err(ListError::TooMany));
        assert_eq!(OutboundInclude::parse(&over), Err(ListError::TooMany));
    }

    #[test]
    fn lists_are_bounded() {
        let many = (1..=65)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse_ports(&many), Err(ListError::TooMany));
        assert_eq!(
            parse_ports(&",".repeat(MAX_LIST_CHARS + 1)),
            Err(ListError::TooLong)
        );
    }

    #[test]
    fn outbound_include_star_or_ranges() {
        assert_eq!(OutboundInclude::parse(" * ").unwrap(), OutboundInclude::All);
        assert_eq!(
            OutboundInclude::parse("").unwrap(),
            OutboundInclude::Ranges(vec![])
        );
        assert_eq!(
            OutboundInclude::parse("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
    }
}
