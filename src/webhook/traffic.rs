//! The `traffic.palisade.dev/*` pod annotations: validated at admission (a bad value denies
//! the pod with a message naming the annotation) and turned into `palisade init` flags.

use std::collections::BTreeMap;

use crate::init::{self, ListError, OutboundInclude};

/// Inbound ports the proxy must not capture (comma-separated).
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.palisade.dev/excludeInboundPorts";
/// Outbound destination ports the proxy must not capture.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.palisade.dev/excludeOutboundPorts";
/// Outbound destinations captured: `*` or IPv4/IPv6 CIDRs (mixed lists allowed).
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.palisade.dev/includeOutboundIPRanges";
/// Outbound destinations not captured: IPv4/IPv6 CIDRs (mixed lists allowed).
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.palisade.dev/excludeOutboundIPRanges";

/// An annotation with a value `palisade init` would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {error}")]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub error: ListError,
}

/// The traffic settings of one pod, already validated and normalised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    /// `None` when the annotation is absent (the `palisade init` default, `*`, applies).
    pub include_outbound: Option<OutboundInclude>,
    pub exclude_outbound_cidrs: Vec<init::Cidr>,
}

impl Traffic {
    /// Reads the four annotations (absent ones keep the defaults).
    pub fn from_annotations(
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Self, AnnotationError> {
        let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
        let wrap = |annotation| move |error| AnnotationError { annotation, error };
        Ok(Self {
            exclude_inbound_ports: get(EXCLUDE_INBOUND_PORTS)
                .map(init::parse_ports)
                .transpose()
                .map_err(wrap(EXCLUDE_INBOUND_PORTS))?
                .unwrap_or_default(),
            exclude_outbound_ports: get(EXCLUDE_OUTBOUND_PORTS)
                .map(init::parse_ports)
                .transpose()
                .map_err(wrap(EXCLUDE_OUTBOUND_PORTS))?
                .unwrap_or_default(),
            include_outbound: get(INCLUDE_OUTBOUND_IP_RANGES)
                .map(OutboundInclude::parse)
                .transpose()
                .map_err(wrap(INCLUDE_OUTBOUND_IP_RANGES))?,
            exclude_outbound_cidrs: get(EXCLUDE_OUTBOUND_IP_RANGES)
                .map(init::parse_cidrs)
                .transpose()
                .map_err(wrap(EXCLUDE_OUTBOUND_IP_RANGES))?
                .unwrap_or_default(),
        })
    }

    /// The `palisade init` arguments for this pod (only what differs from the defaults, plus
    /// the proxy's identity, so the command line in the pod spec reads as what it does).
    pub fn init_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "init".into(),
            "--proxy-uid".into(),
            init::PROXY_UID.to_string(),
            "--proxy-gid".into(),
            init::PROXY_GID.to_string(),
        ];
        let mut flag = |name: &str, value: String| {
            args.push(name.to_string());
            args.push(value);
        };
        if !self.exclude_inbound_ports.is_empty() {
            flag(
                "--exclude-inbound-ports",
                init::join(&self.exclude_inbound_ports),
            );
        }
        if !self.exclude_outbound_ports.is_empty() {
            flag(
                "--exclude-outbound-ports",
                init::join(&self.exclude_outbound_ports),
            );
        }
        if let Some(include) = &self.include_outbound {
            flag("--include-outbound-ip-ranges", include.to_string());
        }
        if !self.exclude_outbound_cidrs.is_empty() {
            flag(
                "--exclude-outbound-ip-ranges",
                init::join(&self.exclude_outbound_cidrs),
            );
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn absent_annotations_give_the_defaults() {
        let t = Traffic::from_annotations(None).unwrap();
        assert_eq!(t, Traffic::default());
        assert_eq!(
            t.init_args(),
            ["init", "--proxy-uid", "1337", "--proxy-gid", "1337"]
        );
    }

    #[test]
    fn values_become_normalised_flags() {
        let a = annotations(&[
            (EXCLUDE_INBOUND_PORTS, "9090, 22"),
            (EXCLUDE_OUTBOUND_PORTS, "5432"),
            (INCLUDE_OUTBOUND_IP_RANGES, "10.96.0.0/12"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "169.254.169.254"),
            ("unrelated", "x"),
        ]);
        let args = Traffic::from_annotations(Some(&a)).unwrap().init_args();
        assert_eq!(
            args[5..],
            [
                "--exclude-inbound-ports",
                "22,9090",
                "--exclude-outbound-ports",
                "5432",
                "--include-outbound-ip-ranges",
                "10.96.0.0/12",
                "--exclude-outbound-ip-ranges",
                "169.254.169.254/32"
            ]
        );
    }

    #[test]
    fn each_bad_value_names_its_annotation() {
        for (key, value) in [
            (EXCLUDE_INBOUND_PORTS, "http"),
            (EXCLUDE_OUTBOUND_PORTS, "70000"),
            (INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/40"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "*"),
        ] {
            let e = Traffic::from_annotations(Some(&annotations(&[(key, value)]))).unwrap_err();
            assert_eq!(e.annotation, key);
            assert!(e.to_string().starts_with(&format!("annotation {key}: ")));
        }
    }

    #[test]
    fn mixed_family_ranges_become_flags() {
        let a = annotations(&[
            (INCLUDE_OUTBOUND_IP_RANGES, "fd00:10:96::/112, 10.96.0.0/12"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "169.254.169.254,fd00:ec2::254"),
        ]);
        let args = Traffic::from_annotations(Some(&a)).unwrap().init_args();
        assert_eq!(
            args[5..],
            [
                "--include-outbound-ip-ranges",
                "10.96.0.0/12,fd00:10:96::/112",
                "--exclude-outbound-ip-ranges",
                "169.254.169.254/32,fd00:ec2::254/128"
            ]
        );
    }

    #[test]
    fn bad_ipv6_values_and_long_lists_are_denied() {
        let e = Traffic::from_annotations(Some(&annotations(&[(
            EXCLUDE_OUTBOUND_IP_RANGES,
            "10.0.0.0/8,fd00::/129",
        )])))
        .unwrap_err();
        assert_eq!(e.error, ListError::Cidr("fd00::/129".into()));
        assert!(e.to_string().contains("\"fd00::/129\""), "{e}");
        let many = (0..=init::MAX_LIST_ENTRIES)
            .map(|i| format!("fd00:{i:x}::/32"))
            .collect::<Vec<_>>()
            .join(",");
        let e =
            Traffic::from_annotations(Some(&annotations(&[(INCLUDE_OUTBOUND_IP_RANGES, &many)])))
                .unwrap_err();
        assert_eq!(e.annotation, INCLUDE_OUTBOUND_IP_RANGES);
        assert_eq!(e.error, ListError::TooMany);
    }
}
