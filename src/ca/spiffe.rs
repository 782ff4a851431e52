//! SPIFFE identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;

/// Longest Kubernetes object name (DNS-1123 subdomain); a longer namespace or service account
/// cannot exist, so anything longer is not a real identity.
const MAX_NAME_LEN: usize = 253;

/// A workload identity: a Kubernetes service account in a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    namespace: String,
    service_account: String,
}

/// Why a string is not a usable identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("{what} {value:?} is not a valid Kubernetes name")]
    InvalidName { what: &'static str, value: String },
    #[error("username {0:?} is not of the form system:serviceaccount:<namespace>:<name>")]
    NotServiceAccount(String),
    #[error("URI {0:?} is not a SPIFFE workload ID of trust domain {1:?}")]
    NotSpiffeId(String, String),
}

/// Names reach certificates and URIs, so they are held to the DNS-1123 subdomain alphabet:
/// nothing that could smuggle a `/`, `:` or `%` into a SPIFFE ID.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && s.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
}

impl Identity {
    /// Builds an identity, rejecting names Kubernetes would not accept.
    pub fn new(namespace: &str, service_account: &str) -> Result<Self, IdentityError> {
        if !valid_name(namespace) {
            return Err(IdentityError::InvalidName {
                what: "namespace",
                value: namespace.into(),
            });
        }
        if !valid_name(service_account) {
            return Err(IdentityError::InvalidName {
                what: "service account",
                value: service_account.into(),
            });
        }
        Ok(Self {
            namespace: namespace.into(),
            service_account: service_account.into(),
        })
    }

    /// Parses a Kubernetes username `system:serviceaccount:<ns>:<sa>`.
    pub fn from_username(username: &str) -> Result<Self, IdentityError> {
        let rest = username
            .strip_prefix("system:serviceaccount:")
            .ok_or_else(|| IdentityError::NotServiceAccount(username.into()))?;
        let (ns, sa) = rest
            .split_once(':')
            .ok_or_else(|| IdentityError::NotServiceAccount(username.into()))?;
        Self::new(ns, sa).map_err(|_| IdentityError::NotServiceAccount(username.into()))
    }

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>` for the given trust domain.
    pub fn from_spiffe_id(uri: &str, trust_domain: &str) -> Result<Self, IdentityError> {
        let bad = || IdentityError::NotSpiffeId(uri.into(), trust_domain.into());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let (td, path) = rest.split_once('/').ok_or_else(bad)?;
        if td != trust_domain {
            return Err(bad());
        }
        let mut parts = path.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => {
                Self::new(ns, sa).map_err(|_| bad())
            }
            _ => Err(bad()),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The Kubernetes username of this service account.
    pub fn username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }

    /// The SPIFFE ID of this identity in `trust_domain`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_round_trip() {
        let id = Identity::from_username("system:serviceaccount:default:web").unwrap();
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "web");
        assert_eq!(id.username(), "system:serviceaccount:default:web");
        assert_eq!(
            id.spiffe_id("cluster.local"),
            "spiffe://cluster.local/ns/default/sa/web"
        );
    }

    #[test]
    fn rejects_non_service_account_usernames() {
        for u in [
            "admin",
            "system:node:n1",
            "system:serviceaccount:default",
            "system:serviceaccount:default:web:extra",
            "system:serviceaccount::web",
            "system:serviceaccount:Default:web",
            "system:serviceaccount:default:we/b",
        ] {
            assert!(Identity::from_username(u).is_err(), "{u}");
        }
    }

    #[test]
    fn spiffe_parsing() {
        let id = Identity::from_spiffe_id("spiffe://td/ns/a/sa/b", "td").unwrap();
        assert_eq!(id, Identity::new("a", "b").unwrap());
        for u in [
            "spiffe://other/ns/a/sa/b",
            "spiffe://td/ns/a/sa/b/c",
            "spiffe://td/ns/a",
            "https://td/ns/a/sa/b",
            "spiffe://td/ns/a/sa/B",
        ] {
            assert!(Identity::from_spiffe_id(u, "td").is_err(), "{u}");
        }
    }

    #[test]
    fn name_length_bound() {
        let long = "a".repeat(254);
        assert!(Identity::new(&long, "sa").is_err());
        assert!(Identity::new(&"a".repeat(253), "sa").is_ok());
    }
}
