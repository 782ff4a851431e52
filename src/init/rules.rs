//! The rule set as `iptables-restore --noflush` / `ip6tables-restore --noflush` scripts (pure
//! functions): one script per address family, each with only that family's ranges.
//!
//! Only Palisade's own chains are touched: declaring them in the script creates or flushes
//! them, and jumps from the built-in chains that a previous run left are deleted in the same
//! transaction before being added again. So applying twice gives the same table, a failed
//! apply changes nothing, and rules other tools put in the nat table survive.

use super::{Cidr, Family, OutboundInclude, PROXY_PORTS, Settings};

/// Inbound TCP: decides what goes to the proxy's inbound port (from PREROUTING).
pub const INBOUND_CHAIN: &str = "PALISADE_INBOUND";
/// Inbound TCP: the redirect itself.
pub const INBOUND_REDIRECT_CHAIN: &str = "PALISADE_IN_REDIRECT";
/// Outbound TCP: decides what goes to the proxy's outbound port (from OUTPUT).
pub const OUTPUT_CHAIN: &str = "PALISADE_OUTPUT";
/// Outbound TCP: the redirect itself.
pub const OUTBOUND_REDIRECT_CHAIN: &str = "PALISADE_REDIRECT";
/// Every chain Palisade owns, in the order they are declared.
pub const OWN_CHAINS: [&str; 4] = [
    INBOUND_CHAIN,
    INBOUND_REDIRECT_CHAIN,
    OUTPUT_CHAIN,
    OUTBOUND_REDIRECT_CHAIN,
];
/// Prefix of every chain Palisade owns.
pub const CHAIN_PREFIX: &str = "PALISADE_";

/// The loopback range of a family: traffic to it stays local.
fn loopback(family: Family) -> &'static str {
    match family {
        Family::V4 => "127.0.0.0/8",
        Family::V6 => "::1/128",
    }
}

/// The ranges of `family` in `cidrs` (the other family's go to the other script).
fn of_family(cidrs: &[Cidr], family: Family) -> impl Iterator<Item = &Cidr> {
    cidrs.iter().filter(move |c| c.family() == family)
}

/// The rules proper for one family (no chain declarations, no clean-up), one `iptables` /
/// `ip6tables` rule per line.
pub fn rules(s: &Settings, family: Family) -> Vec<String> {
    let mut r = vec![
        format!(
            "-A {INBOUND_REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            s.inbound_capture_port
        ),
        format!(
            "-A {OUTBOUND_REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            s.outbound_capture_port
        ),
    ];
    // Inbound: the proxy's own ports (the kubelet probes the admin port directly) and the
    // excluded ones stay as they are; everything else is the proxy's.
    let mut skip_in: Vec<u16> = PROXY_PORTS.to_vec();
    skip_in.extend(&s.exclude_inbound_ports);
    skip_in.sort_unstable();
    skip_in.dedup();
    for port in skip_in {
        r.push(format!(
            "-A {INBOUND_CHAIN} -p tcp --dport {port} -j RETURN"
        ));
    }
    r.push(format!(
        "-A {INBOUND_CHAIN} -p tcp -j {INBOUND_REDIRECT_CHAIN}"
    ));

    // Outbound: the proxy's own connections (by socket owner) must not loop back into it;
    // loopback traffic stays local.
    r.push(format!(
        "-A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN",
        s.proxy_uid
    ));
    r.push(format!(
        "-A {OUTPUT_CHAIN} -m owner --gid-owner {} -j RETURN",
        s.proxy_gid
    ));
    r.push(format!("-A {OUTPUT_CHAIN} -o lo -j RETURN"));
    r.push(format!(
        "-A {OUTPUT_CHAIN} -d {} -j RETURN",
        loopback(family)
    ));
    for port in &s.exclude_outbound_ports {
        r.push(format!("-A {OUTPUT_CHAIN} -p tcp --dport {port} -j RETURN"));
    }
    for cidr in of_family(&s.exclude_outbound_cidrs, family) {
        r.push(format!("-A {OUTPUT_CHAIN} -d {cidr} -j RETURN"));
    }
    match &s.include_outbound {
        OutboundInclude::All => r.push(format!(
            "-A {OUTPUT_CHAIN} -p tcp -j {OUTBOUND_REDIRECT_CHAIN}"
        )),
        OutboundInclude::Ranges(ranges) => {
            for cidr in of_family(ranges, family) {
                r.push(format!(
                    "-A {OUTPUT_CHAIN} -p tcp -d {cidr} -j {OUTBOUND_REDIRECT_CHAIN}"
                ));
            }
        }
    }
    r
}

/// The jumps from the built-in chains into ours.
fn jumps() -> [String; 2] {
    [
        format!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}"),
        format!("-A OUTPUT -p tcp -j {OUTPUT_CHAIN}"),
    ]
}

/// `-D` lines for every rule in a built-in chain of `current` (an `iptables-save -t nat`
/// dump) that jumps into one of our chains.
fn stale_jumps(current: &str) -> Vec<String> {
    current
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("-A ")?;
            let (chain, spec) = rest.split_once(' ')?;
            let ours = chain.starts_with(CHAIN_PREFIX);
            let jumps_to_ours = spec
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1].starts_with(CHAIN_PREFIX));
            (!ours && jumps_to_ours).then(|| format!("-D {chain} {spec}"))
        })
        .collect()
}

/// Our chains that exist in `current` (an `iptables-save -t nat` dump).
fn existing_chains(current: &str) -> Vec<String> {
    current
        .lines()
        .filter_map(|line| line.strip_prefix(':'))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|name| name.starts_with(CHAIN_PREFIX))
        .map(str::to_string)
        .collect()
}

/// The script that installs one family's rule set, given what its nat table holds now.
pub fn apply_script(s: &Settings, family: Family, current: &str) -> String {
    let mut out = String::from("*nat\n");
    for chain in OWN_CHAINS {
        // With --noflush, declaring a chain creates it or empties it.
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for line in stale_jumps(current) {
        out.push_str(&line);
        out.push('\n');
    }
    for line in rules(s, family).into_iter().chain(jumps()) {
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// The script that removes everything Palisade installed in one nat table (either family: the
/// chain names are the same), or `None` when nothing is there.
pub fn cleanup_script(current: &str) -> Option<String> {
    let jumps = stale_jumps(current);
    let chains = existing_chains(current);
    if jumps.is_empty() && chains.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for line in jumps {
        out.push_str(&line);
        out.push('\n');
    }
    // Flush all before deleting any: our chains jump into each other.
    for chain in &chains {
        out.push_str(&format!("-F {chain}\n"));
    }
    for chain in &chains {
        out.push_str(&format!("-X {chain}\n"));
    }
    out.push_str("COMMIT\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::{parse_cidrs, parse_ports};

    const EMPTY: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n\
        :OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

    fn applied() -> String {
        // What iptables-save prints after the default rule set was applied.
        let mut dump = String::from(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             :POSTROUTING ACCEPT [0:0]\n",
        );
        for c in OWN_CHAINS {
            dump.push_str(&format!(":{c} - [0:0]\n"));
        }
        dump.push_str("-A PREROUTING -p tcp -j PALISADE_INBOUND\n");
        dump.push_str("-A OUTPUT -p tcp -j PALISADE_OUTPUT\n");
        dump.push_str("-A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE\n");
        dump.push_str("COMMIT\n");
        dump
    }

    #[test]
    fn default_rule_set() {
        let expected = "\
-A PALISADE_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PALISADE_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A PALISADE_INBOUND -p tcp --dport 15001 -j RETURN
-A PALISADE_INBOUND -p tcp --dport 15006 -j RETURN
-A PALISADE_INBOUND -p tcp --dport 15020 -j RETURN
-A PALISADE_INBOUND -p tcp --dport 15021 -j RETURN
-A PALISADE_INBOUND -p tcp -j PALISADE_IN_REDIRECT
-A PALISADE_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A PALISADE_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A PALISADE_OUTPUT -o lo -j RETURN
-A PALISADE_OUTPUT -d 127.0.0.0/8 -j RETURN
-A PALISADE_OUTPUT -p tcp -j PALISADE_REDIRECT";
        assert_eq!(rules(&Settings::default(), Family::V4).join("\n"), expected);
    }

    #[test]
    fn exclusions_and_inclusions() {
        let s = Settings {
            exclude_inbound_ports: parse_ports("22,15020").unwrap(),
            exclude_outbound_ports: parse_ports("5432").unwrap(),
            include_outbound: OutboundInclude::Ranges(parse_cidrs("10.96.0.0/12").unwrap()),
            exclude_outbound_cidrs: parse_cidrs("10.96.0.1").unwrap(),
            ..Settings::default()
        };
        let r = rules(&s, Family::V4);
        let has = |l: &str| assert!(r.iter().any(|x| x == l), "{l} missing from {r:#?}");
        has("-A PALISADE_INBOUND -p tcp --dport 22 -j RETURN");
        has("-A PALISADE_OUTPUT -p tcp --dport 5432 -j RETURN");
        has("-A PALISADE_OUTPUT -d 10.96.0.1/32 -j RETURN");
        has("-A PALISADE_OUTPUT -p tcp -d 10.96.0.0/12 -j PALISADE_REDIRECT");
        assert!(!r.contains(&"-A PALISADE_OUTPUT -p tcp -j PALISADE_REDIRECT".to_string()));
        // 15020 listed twice (excluded and a proxy port) gives one rule.
        assert_eq!(r.iter().filter(|l| l.contains("--dport 15020")).count(), 1);
        // Exclusions come before the redirect, or they would never match.
        let pos = |l: &str| r.iter().position(|x| x == l).unwrap();
        assert!(
            pos("-A PALISADE_OUTPUT -d 10.96.0.1/32 -j RETURN")
                < pos("-A PALISADE_OUTPUT -p tcp -d 10.96.0.0/12 -j PALISADE_REDIRECT")
        );
    }

    #[test]
    fn empty_include_list_captures_no_outbound() {
        let s = Settings {
            include_outbound: OutboundInclude::Ranges(vec![]),
            ..Settings::default()
        };
        assert!(
            !rules(&s, Family::V4)
                .iter()
                .any(|l| l.ends_with("-j PALISADE_REDIRECT"))
        );
    }

    #[test]
    fn first_apply_only_adds() {
        let script = apply_script(&Settings::default(), Family::V4, EMPTY);
        assert!(script.starts_with("*nat\n:PALISADE_INBOUND - [0:0]\n"));
        assert!(script.ends_with("-A OUTPUT -p tcp -j PALISADE_OUTPUT\nCOMMIT\n"));
        assert!(!script.contains("-D "));
    }

    #[test]
    fn reapply_replaces_the_jumps_in_the_same_transaction() {
        let script = apply_script(&Settings::default(), Family::V4, &applied());
        let lines: Vec<&str> = script.lines().collect();
        let del = lines
            .iter()
            .position(|l| *l == "-D PREROUTING -p tcp -j PALISADE_INBOUND")
            .unwrap();
        let add = lines
            .iter()
            .position(|l| *l == "-A PREROUTING -p tcp -j PALISADE_INBOUND")
            .unwrap();
        assert!(del < add);
        assert!(script.contains("-D OUTPUT -p tcp -j PALISADE_OUTPUT\n"));
        // Other tools' rules are not touched.
        assert!(!script.contains("MASQUERADE"));
    }

    #[test]
    fn cleanup_removes_jumps_then_flushes_then_deletes() {
        assert_eq!(cleanup_script(EMPTY), None);
        let script = cleanup_script(&applied()).unwrap();
        let expected = "*nat\n\
            -D PREROUTING -p tcp -j PALISADE_INBOUND\n\
            -D OUTPUT -p tcp -j PALISADE_OUTPUT\n\
            -F PALISADE_INBOUND\n-F PALISADE_IN_REDIRECT\n-F PALISADE_OUTPUT\n-F PALISADE_REDIRECT\n\
            -X PALISADE_INBOUND\n-X PALISADE_IN_REDIRECT\n-X PALISADE_OUTPUT\n-X PALISADE_REDIRECT\n\
            COMMIT\n";
        assert_eq!(script, expected);
    }

    #[test]
    fn default_ipv6_rule_set_differs_only_in_loopback() {
        let v4 = rules(&Settings::default(), Family::V4);
        let v6 = rules(&Settings::default(), Family::V6);
        let expected: Vec<String> = v4
            .iter()
            .map(|l| l.replace("-d 127.0.0.0/8", "-d ::1/128"))
            .collect();
        assert_eq!(v6, expected);
        assert!(v6.contains(&"-A PALISADE_OUTPUT -d ::1/128 -j RETURN".to_string()));
        assert!(v6.contains(&"-A PALISADE_OUTPUT -m owner --uid-owner 1337 -j RETURN".to_string()));
    }

    #[test]
    fn mixed_ranges_go_to_their_own_family() {
        let s = Settings {
            include_outbound: OutboundInclude::Ranges(
                parse_cidrs("10.96.0.0/12,fd00:10:96::/112").unwrap(),
            ),
            exclude_outbound_cidrs: parse_cidrs("169.254.169.254,fd00:ec2::254").unwrap(),
            exclude_outbound_ports: parse_ports("5432").unwrap(),
            ..Settings::default()
        };
        let v4 = rules(&s, Family::V4).join("\n");
        let v6 = rules(&s, Family::V6).join("\n");
        assert!(v4.contains("-A PALISADE_OUTPUT -d 169.254.169.254/32 -j RETURN"));
        assert!(v4.contains("-A PALISADE_OUTPUT -p tcp -d 10.96.0.0/12 -j PALISADE_REDIRECT"));
        assert!(!v4.contains("fd00"), "{v4}");
        assert!(v6.contains("-A PALISADE_OUTPUT -d fd00:ec2::254/128 -j RETURN"));
        assert!(v6.contains("-A PALISADE_OUTPUT -p tcp -d fd00:10:96::/112 -j PALISADE_REDIRECT"));
        assert!(v6.contains("-A PALISADE_OUTPUT -p tcp --dport 5432 -j RETURN"));
        assert!(!v6.contains("169.254") && !v6.contains("10.96") && !v6.contains("127.0.0"));
        // Neither family captures everything when ranges are listed.
        for r in [&v4, &v6] {
            assert!(
                !r.contains("-A PALISADE_OUTPUT -p tcp -j PALISADE_REDIRECT"),
                "{r}"
            );
        }
    }

    #[test]
    fn ipv4_only_include_list_captures_no_ipv6_outbound() {
        let s = Settings {
            include_outbound: OutboundInclude::Ranges(parse_cidrs("10.0.0.0/8").unwrap()),
            ..Settings::default()
        };
        assert!(
            !rules(&s, Family::V6)
                .iter()
                .any(|l| l.ends_with("-j PALISADE_REDIRECT"))
        );
    }

    #[test]
    fn star_captures_everything_in_both_families() {
        for family in [Family::V4, Family::V6] {
            let r = rules(&Settings::default(), family);
            assert_eq!(
                r.last().map(String::as_str),
                Some("-A PALISADE_OUTPUT -p tcp -j PALISADE_REDIRECT"),
                "{family:?}"
            );
        }
    }

    #[test]
    fn ipv6_apply_script_has_the_same_shape() {
        let v6 = apply_script(&Settings::default(), Family::V6, EMPTY);
        let v4 = apply_script(&Settings::default(), Family::V4, EMPTY);
        assert_eq!(v6, v4.replace("-d 127.0.0.0/8", "-d ::1/128"));
        assert!(v6.starts_with("*nat\n:PALISADE_INBOUND - [0:0]\n"));
        assert!(v6.ends_with("-A OUTPUT -p tcp -j PALISADE_OUTPUT\nCOMMIT\n"));
    }
}
