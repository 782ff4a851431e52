//! AuthorizationPolicy enforcement on the inbound path: the decision for a connection once its
//! peer is known (after the mesh mTLS handshake, or at accept for plaintext), and the watch
//! that closes an open connection when a later policy denies it.
//!
//! Fail closed: before the first policy nothing is allowed (the proxy is not ready then
//! anyway), and a peer identity that is not a workload SPIFFE ID is denied whenever any policy
//! applies.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

use super::context::ConnectionInfo;
use super::state::Policy;
use crate::policy::authz::{Connection, Reason, WorkloadAuthz};

/// `policy` label of `palisade_proxy_authz_denied_total` when ALLOW policies apply and none
/// matched (no single policy decided).
pub const NO_ALLOW_MATCHED: &str = "no ALLOW policy matched";
/// `policy` label when the peer's identity is not a workload SPIFFE ID.
pub const BAD_IDENTITY: &str = "peer identity not a workload SPIFFE ID";
/// `policy` label before the first policy arrived.
pub const NO_POLICY: &str = "no policy yet";

/// A denied connection: what the metric and the log say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    /// The policy that decided (`<namespace>/<name>`), or one of the constants above.
    pub policy: String,
    /// Why, with the rule when one decided (for the log only).
    pub why: String,
}

/// What a decision sees of `info`: `None` when the peer identity is not a workload SPIFFE ID.
pub fn connection(info: &ConnectionInfo, sni: Option<&str>) -> Option<Connection> {
    let (src, dst) = (info.source.ip(), info.destination.ip());
    let port = info.destination.port();
    let c = match &info.peer_identity {
        Some(id) => Connection::mtls(id, src, dst, port).ok()?,
        None => Connection::plaintext(src, dst, port),
    };
    Some(c.with_sni(sni.map(str::to_string)))
}

/// The decision for a connection described by `conn` (`None`: unusable peer identity) under
/// `policy` (`None`: no policy yet).
pub fn decide(policy: Option<&Policy>, conn: Option<&Connection>) -> Result<(), Denied> {
    let Some(policy) = policy else {
        return Err(Denied {
            policy: NO_POLICY.into(),
            why: "no policy from the control plane yet".into(),
        });
    };
    decide_with(&policy.authz, conn)
}

fn decide_with(authz: &WorkloadAuthz, conn: Option<&Connection>) -> Result<(), Denied> {
    if authz.policies().is_empty() {
        return Ok(());
    }
    let Some(conn) = conn else {
        return Err(Denied {
            policy: BAD_IDENTITY.into(),
            why: "the peer's SPIFFE ID is not spiffe://<td>/ns/<ns>/sa/<sa>".into(),
        });
    };
    let verdict = authz.decide(conn);
    if verdict.allowed {
        return Ok(());
    }
    let decided = verdict
        .decided_by
        .and_then(|r| authz.policy(r).map(|p| (p, r.rule)));
    let name = |p: &crate::policy::authz::CompiledPolicy| {
        format!("{}/{}", p.object.namespace, p.object.name)
    };
    let (policy, why) = match (verdict.reason, decided) {
        (Reason::CustomUnsupported, Some((p, _))) => (
            name(p),
            "action CUSTOM is not supported: denies every connection".to_string(),
        ),
        (_, Some((p, Some(rule)))) => (name(p), format!("DENY rule {rule} matched")),
        (_, Some((p, None))) => (name(p), "denied".to_string()),
        (_, None) => (
            NO_ALLOW_MATCHED.to_string(),
            "ALLOW policies apply and none matched".to_string(),
        ),
    };
    Err(Denied { policy, why })
}

/// Waits until a policy published on `policy` denies `conn`, and returns that denial. The
/// caller has decided with the value it last saw on this receiver; every later value is
/// checked. Never returns while the policy keeps allowing (or the agent is gone: the last
/// policy then stays in force).
pub async fn revoked(
    mut policy: watch::Receiver<Option<Arc<Policy>>>,
    conn: Option<Connection>,
) -> Denied {
    // Most policy updates change Destinations or Workloads, not the AuthorizationPolicies:
    // those keep the same compiled set (the same `Arc`) and need no new decision. The set the
    // caller decided with is not known here (the receiver may already hold a newer value), so
    // the first update is always decided.
    let mut decided: Option<Arc<WorkloadAuthz>> = None;
    loop {
        if policy.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        let current = policy.borrow_and_update().clone();
        // A policy withdrawn (`None`) never happens after the first one; keep the last.
        let Some(p) = current else { continue };
        if decided.as_ref().is_some_and(|d| Arc::ptr_eq(d, &p.authz)) {
            continue;
        }
        if let Err(denied) = decide_with(&p.authz, conn.as_ref()) {
            return denied;
        }
        decided = Some(p.authz.clone());
    }
}

/// Makes the next close of `stream` a reset (RST) rather than an orderly FIN: a denied peer
/// learns nothing from a clean end of stream, and no buffered bytes are delivered.
pub fn reset_on_close(stream: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(error = %e, "could not set SO_LINGER 0 on a denied connection");
    }
}

/// The peer as the log names it.
pub fn peer_name(info: &ConnectionInfo) -> &str {
    info.peer_identity.as_deref().unwrap_or("plaintext")
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
