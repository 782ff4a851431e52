//! AuthorizationPolicy: which policies apply to a workload and whether one connection may
//! reach it, decided by identity at L4. Pure functions over plain data.
//!
//! - [`AuthzEngine::new`] compiles every policy once (string patterns, CIDRs and ports parsed;
//!   findings collected); [`AuthzEngine::for_workload`] selects the policies that apply
//!   (root namespace: every namespace, with or without a selector; elsewhere the policy's own
//!   namespace, narrowed by the selector; a `targetRef` policy applies to no sidecar) and
//!   indexes their rules in a [`WorkloadAuthz`]; [`WorkloadAuthz::decide`] decides one
//!   [`Connection`].
//! - Istio's order: CUSTOM (unsupported here, so a CUSTOM policy that applies denies), then
//!   DENY, then ALLOW (with any ALLOW policy, one must match), then allow.
//! - What an L4 proxy cannot check follows Istio's TCP rule (stricter, never looser): see
//!   `compile`. Each such field, an ALLOW policy that allows nothing, a rule that matches
//!   everything, CUSTOM and AUDIT are [`Diagnostic`]s of the policy, and status conditions
//!   through [`authz_status`].

mod compile;
mod decide;
mod index;
mod matcher;
mod prefix;
mod status;
pub mod wire;

use std::net::IpAddr;

use serde::Serialize;

pub use compile::{CompiledPolicy, L4_CONDITION_KEYS};
#[cfg(test)]
pub(crate) use decide::scan_decide;
pub use decide::{AuthzEngine, WorkloadAuthz};
pub use status::{authz_status, authz_statuses};

use super::model::{Diagnostic, ObjectRef};

/// Longest SPIFFE ID accepted from a peer (bytes), as the SPIFFE specification bounds URIs.
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;

/// What the decision sees of one inbound connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The peer's identity without `spiffe://` (`<td>/ns/<ns>/sa/<sa>`); `None` for plaintext.
    pub principal: Option<String>,
    /// The namespace in the peer's identity; `None` for plaintext.
    pub namespace: Option<String>,
    /// `<ns>/<sa>` from the peer's identity; `None` for plaintext.
    pub service_account: Option<String>,
    /// The peer address.
    pub source_ip: IpAddr,
    /// The address the connection arrived on.
    pub destination_ip: IpAddr,
    /// The workload port the connection is for.
    pub destination_port: u16,
    /// The TLS server name the peer sent, if any.
    pub sni: Option<String>,
}

/// A peer identity that is not a workload SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer identity is not a SPIFFE ID of the form spiffe://<trust domain>/ns/<ns>/sa/<sa>")]
pub struct BadIdentity;

impl Connection {
    /// A connection authenticated by mTLS as `spiffe_id`. Only workload IDs
    /// (`spiffe://<td>/ns/<ns>/sa/<sa>`) are accepted: the namespace rules match on what the
    /// identity says, so anything else is refused rather than guessed at.
    pub fn mtls(
        spiffe_id: &str,
        source_ip: IpAddr,
        destination_ip: IpAddr,
        destination_port: u16,
    ) -> Result<Connection, BadIdentity> {
        if spiffe_id.len() > MAX_SPIFFE_ID_BYTES {
            return Err(BadIdentity);
        }
        let principal = spiffe_id.strip_prefix("spiffe://").ok_or(BadIdentity)?;
        let parts: Vec<&str> = principal.split('/').collect();
        let [td, "ns", ns, "sa", sa] = parts.as_slice() else {
            return Err(BadIdentity);
        };
        if td.is_empty() || ns.is_empty() || sa.is_empty() {
            return Err(BadIdentity);
        }
        Ok(Connection {
            principal: Some(principal.to_string()),
            namespace: Some(ns.to_string()),
            service_account: Some(format!("{ns}/{sa}")),
            source_ip,
            destination_ip,
            destination_port,
            sni: None,
        })
    }

    /// A plaintext connection (PERMISSIVE or DISABLE): no identity.
    pub fn plaintext(
        source_ip: IpAddr,
        destination_ip: IpAddr,
        destination_port: u16,
    ) -> Connection {
        Connection {
            principal: None,
            namespace: None,
            service_account: None,
            source_ip,
            destination_ip,
            destination_port,
            sni: None,
        }
    }

    /// The same connection with the TLS server name the peer sent.
    pub fn with_sni(mut self, sni: Option<String>) -> Connection {
        self.sni = sni;
        self
    }
}

/// Names a policy of a [`WorkloadAuthz`] (by position) and one of its rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef {
    /// Position in [`WorkloadAuthz::policies`].
    pub policy: u32,
    /// Index in the policy's `spec.rules`; `None` when the policy decided as a whole (CUSTOM).
    pub rule: Option<u32>,
}

/// Why a decision came out as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Reason {
    /// A CUSTOM policy applies; Palisade has no external authorizer, so it denies.
    CustomUnsupported,
    /// A DENY rule matched.
    DenyMatched,
    /// An ALLOW rule matched.
    AllowMatched,
    /// ALLOW policies apply and none matched.
    NoAllowMatched,
    /// No ALLOW policy applies and no DENY rule matched.
    NoAllowPolicy,
}

/// The decision for one connection (cheap to copy: the proxy's hot path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the connection may proceed.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
    /// The policy (and rule) that decided, if one did.
    pub decided_by: Option<RuleRef>,
}

/// A decision with names, for explanations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzDecision {
    /// Whether the connection may proceed.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
    /// The policy that decided, if one did.
    pub policy: Option<ObjectRef>,
    /// The index of the rule in that policy's `spec.rules`, if a rule decided.
    pub rule: Option<u32>,
    /// The policies that apply to the workload, in decision order.
    pub applying: Vec<ObjectRef>,
    /// Findings about the policies that apply.
    pub diagnostics: Vec<Diagnostic>,
}

impl WorkloadAuthz {
    /// [`WorkloadAuthz::decide`] with the deciding policy named and the findings about every
    /// policy that applies.
    pub fn explain(&self, c: &Connection) -> AuthzDecision {
        let verdict = self.decide(c);
        let policy = verdict
            .decided_by
            .and_then(|r| self.policy(r))
            .map(|p| p.object.clone());
        AuthzDecision {
            allowed: verdict.allowed,
            reason: verdict.reason,
            policy,
            rule: verdict.decided_by.and_then(|r| r.rule),
            applying: self.policies().iter().map(|p| p.object.clone()).collect(),
            diagnostics: self
                .policies()
                .iter()
                .flat_map(|p| p.diagnostics.iter().cloned())
                .collect(),
        }
    }
}
