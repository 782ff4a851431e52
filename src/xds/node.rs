//! The pod a proxy names in its xDS `node` (see `proto/palisade/v1/mesh.proto`):
//! `node.id = "<namespace>/<pod>"`, and optionally metadata `POD_NAMESPACE`, `POD_NAME`,
//! `INSTANCE_IP`, which must agree with the id. Pure; the ADS server turns the result, with the
//! identity of the client certificate, into a [`crate::xds::views::ProxyClaim`].

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;

use crate::controller::inventory::ObjectKey;

/// Longest namespace (a DNS-1123 label).
const MAX_NAMESPACE: usize = 63;
/// Longest pod name (a DNS-1123 subdomain).
const MAX_POD_NAME: usize = 253;
/// Longest metadata value read (an IPv6 address is at most 45 bytes).
const MAX_VALUE: usize = 256;

/// Why a node does not name a pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The first request carried no node.
    #[error("the first request carries no node")]
    Missing,
    /// `node.id` is not `<namespace>/<pod>` with valid names.
    #[error("node.id is not <namespace>/<pod>")]
    BadId,
    /// A metadata field is not a short string.
    #[error("node metadata {0} is not a string of at most {MAX_VALUE} bytes")]
    BadMetadata(&'static str),
    /// A metadata field disagrees with `node.id`.
    #[error("node metadata {0} disagrees with node.id")]
    Mismatch(&'static str),
    /// `INSTANCE_IP` is not an IP address.
    #[error("node metadata INSTANCE_IP is not an IP address")]
    BadInstanceIp,
}

/// What a node says about the proxy's pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeClaim {
    /// The pod.
    pub pod: ObjectKey,
    /// `INSTANCE_IP`, when given.
    pub instance_ip: Option<IpAddr>,
}

/// Kubernetes object names: lower-case alphanumerics, `-` and `.`, starting and ending
/// alphanumeric (namespaces may not contain `.`).
fn valid_name(s: &str, max: usize, dots: bool) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.')
        })
        && s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && s.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A string metadata field, `None` when absent.
fn metadata<'a>(node: &'a Node, key: &'static str) -> Result<Option<&'a str>, NodeError> {
    let Some(value) = node.metadata.as_ref().and_then(|m| m.fields.get(key)) else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(s)) if s.len() <= MAX_VALUE => Ok(Some(s)),
        _ => Err(NodeError::BadMetadata(key)),
    }
}

/// Reads the pod a node names.
pub fn parse_node(node: Option<&Node>) -> Result<NodeClaim, NodeError> {
    let node = node.ok_or(NodeError::Missing)?;
    let (namespace, name) = node.id.split_once('/').ok_or(NodeError::BadId)?;
    if !valid_name(namespace, MAX_NAMESPACE, false) || !valid_name(name, MAX_POD_NAME, true) {
        return Err(NodeError::BadId);
    }
    if metadata(node, "POD_NAMESPACE")?.is_some_and(|ns| ns != namespace) {
        return Err(NodeError::Mismatch("POD_NAMESPACE"));
    }
    if metadata(node, "POD_NAME")?.is_some_and(|n| n != name) {
        return Err(NodeError::Mismatch("POD_NAME"));
    }
    let instance_ip = match metadata(node, "INSTANCE_IP")? {
        Some(ip) => Some(ip.parse().map_err(|_| NodeError::BadInstanceIp)?),
        None => None,
    };
    Ok(NodeClaim {
        pod: ObjectKey::new(namespace, name),
        instance_ip,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::google::protobuf::{Struct, Value};

    use super::*;

    fn node(id: &str, meta: &[(&str, Kind)]) -> Node {
        let fields: HashMap<String, Value> = meta
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(v.clone()),
                    },
                )
            })
            .collect();
        Node {
            id: id.into(),
            metadata: (!fields.is_empty()).then_some(Struct { fields }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> Kind {
        Kind::StringValue(v.into())
    }

    #[test]
    fn nodes_name_pods() {
        let ok = |ns: &str, pod: &str, ip: Option<&str>| {
            Ok(NodeClaim {
                pod: ObjectKey::new(ns, pod),
                instance_ip: ip.map(|i| i.parse().unwrap()),
            })
        };
        let long_pod = format!("a{}", "b".repeat(MAX_POD_NAME));
        let long_ns = "n".repeat(MAX_NAMESPACE + 1);
        let cases: Vec<(&str, Option<Node>, Result<NodeClaim, NodeError>)> = vec![
            (
                "id only",
                Some(node("shop/web-1", &[])),
                ok("shop", "web-1", None),
            ),
            (
                "dotted pod",
                Some(node("shop/web.v1", &[])),
                ok("shop", "web.v1", None),
            ),
            (
                "metadata agrees",
                Some(node(
                    "shop/web-1",
                    &[
                        ("POD_NAME", s("web-1")),
                        ("POD_NAMESPACE", s("shop")),
                        ("INSTANCE_IP", s("10.0.0.7")),
                    ],
                )),
                ok("shop", "web-1", Some("10.0.0.7")),
            ),
            (
                "IPv6",
                Some(node("shop/web-1", &[("INSTANCE_IP", s("fd00::7"))])),
                ok("shop", "web-1", Some("fd00::7")),
            ),
            (
                "other metadata ignored",
                Some(node(
                    "shop/web-1",
                    &[("ISTIO_VERSION", Kind::NumberValue(1.0))],
                )),
                ok("shop", "web-1", None),
            ),
            ("no node", None, Err(NodeError::Missing)),
            ("empty id", Some(node("", &[])), Err(NodeError::BadId)),
            ("no slash", Some(node("web-1", &[])), Err(NodeError::BadId)),
            (
                "two slashes",
                Some(node("shop/web/1", &[])),
                Err(NodeError::BadId),
            ),
            (
                "upper case",
                Some(node("Shop/web-1", &[])),
                Err(NodeError::BadId),
            ),
            (
                "dotted namespace",
                Some(node("sh.op/web-1", &[])),
                Err(NodeError::BadId),
            ),
            ("empty pod", Some(node("shop/", &[])), Err(NodeError::BadId)),
            (
                "long pod",
                Some(node(&format!("shop/{long_pod}"), &[])),
                Err(NodeError::BadId),
            ),
            (
                "long namespace",
                Some(node(&format!("{long_ns}/web"), &[])),
                Err(NodeError::BadId),
            ),
            (
                "other pod in metadata",
                Some(node("shop/web-1", &[("POD_NAME", s("db-0"))])),
                Err(NodeError::Mismatch("POD_NAME")),
            ),
            (
                "other namespace in metadata",
                Some(node("shop/web-1", &[("POD_NAMESPACE", s("bank"))])),
                Err(NodeError::Mismatch("POD_NAMESPACE")),
            ),
            (
                "number pod name",
                Some(node("shop/web-1", &[("POD_NAME", Kind::NumberValue(1.0))])),
                Err(NodeError::BadMetadata("POD_NAME")),
            ),
            (
                "huge metadata",
                Some(node(
                    "shop/web-1",
                    &[("POD_NAME", s(&"x".repeat(MAX_VALUE + 1)))],
                )),
                Err(NodeError::BadMetadata("POD_NAME")),
            ),
            (
                "bad IP",
                Some(node("shop/web-1", &[("INSTANCE_IP", s("10.0.0.300"))])),
                Err(NodeError::BadInstanceIp),
            ),
        ];
        for (what, n, want) in cases {
            assert_eq!(parse_node(n.as_ref()), want, "{what}");
        }
    }
}
