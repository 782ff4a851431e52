//! The admin port (:15020, plain HTTP/1.1 inside the pod): `/healthz` (the injector's startup
//! and readiness probes), `/metrics`, `/certs`, `/config` and `/app-health/...`. It reads the
//! same watch channels as the listeners and never holds a lock across an await. Nothing here
//! exposes a private key.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use super::app_health::{self, AppProbes};
use super::identity::seconds_to_expiry;
use super::metrics::ProxyMetrics;
use super::state::{Identity, Policy, Shared, Trust};
use crate::xds::proto::palisade_v1 as pb;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub shared: Shared,
    pub metrics: ProxyMetrics,
    pub registry: Arc<Registry>,
    pub probes: Arc<AppProbes>,
}

impl AdminState {
    /// A registry with the `palisade` prefix holding `metrics`.
    pub fn new(shared: Shared, metrics: ProxyMetrics, probes: AppProbes) -> Self {
        let mut registry = Registry::with_prefix("palisade");
        metrics.register(&mut registry);
        Self {
            shared,
            metrics,
            registry: Arc::new(registry),
            probes: Arc::new(probes),
        }
    }
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/certs", get(certs))
        .route("/config", get(config))
        .route("/app-health/{container}/{kind}", get(app_health))
        .with_state(state)
}

/// Whether the proxy can serve: it holds an unexpired certificate and its first policy.
/// `Err` carries the short reason `/healthz` answers with.
pub fn health(
    identity: Option<&Identity>,
    has_policy: bool,
    now: SystemTime,
) -> Result<(), &'static str> {
    match identity {
        None => Err("no workload certificate yet"),
        Some(id) if id.not_after <= now => Err("the workload certificate has expired"),
        Some(_) if !has_policy => Err("no policy from the control plane yet"),
        Some(_) => Ok(()),
    }
}

async fn healthz(State(s): State<AdminState>) -> Response {
    let identity = s.shared.identity.borrow().clone();
    let has_policy = s.shared.policy.borrow().is_some();
    match health(identity.as_deref(), has_policy, SystemTime::now()) {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    // The expiry gauge counts down between renewals: bring it up to date for this scrape.
    if let Some(id) = s.shared.identity.borrow().as_deref() {
        s.metrics
            .certificate_expiry_seconds
            .set(seconds_to_expiry(id, SystemTime::now()));
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &s.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// RFC 3339 in UTC, e.g. `2026-12-02T03:55:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|ts| ts.to_string())
        .unwrap_or_else(|_| "invalid".into())
}

/// The `/certs` document: the current certificate (no key) and the bundle roots.
pub fn certs_json(identity: Option<&Identity>, trust: &Trust) -> Value {
    let certificate = identity.map(|id| {
        json!({
            "spiffe_id": id.spiffe_id,
            "serial": id.serial,
            "not_before": rfc3339(id.not_before),
            "not_after": rfc3339(id.not_after),
            "chain": id.chain_pem,
        })
    });
    json!({ "certificate": certificate, "roots": trust.roots_pem })
}

async fn certs(State(s): State<AdminState>) -> Response {
    let identity = s.shared.identity.borrow().clone();
    let trust = s.shared.trust.borrow().clone();
    json_response(&certs_json(identity.as_deref(), &trust))
}

fn json_response(value: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn mode_name(raw: i32) -> &'static str {
    pb::MtlsMode::try_from(raw).map_or("UNKNOWN", |m| m.as_str_name())
}

fn tls_json(tls: Option<&pb::ClientTls>) -> Value {
    let Some(t) = tls else {
        return Value::Null;
    };
    json!({
        "mode": pb::client_tls::Mode::try_from(t.mode).map_or("UNKNOWN", |m| m.as_str_name()),
        "expected_identities": t.expected_identities,
        "sni": t.sni,
        "ca_certificates": t.ca_certificates,
        "client_certificate": t.client_certificate,
        "private_key": t.private_key,
        "credential_name": t.credential_name,
        "insecure_skip_verify": t.insecure_skip_verify,
        "ca_crl": t.ca_crl,
        "decided_by": t.decided_by,
    })
}

/// The `/config` document: the policy in force, as the control plane sent it.
pub fn config_json(policy: &Policy) -> Value {
    let inbound = &policy.inbound;
    let port_modes: serde_json::Map<String, Value> = inbound
        .port_modes
        .iter()
        .map(|(port, mode)| (port.to_string(), Value::from(mode_name(*mode))))
        .collect();
    let destinations: Vec<Value> = policy
        .destinations
        .iter()
        .map(|d| {
            let ports: Vec<Value> = d
                .ports
                .iter()
                .map(|p| {
                    let endpoints: Vec<Value> = p
                        .endpoints
                        .iter()
                        .map(|e| {
                            json!({
                                "ip": e.ip, "port": e.port, "meshed": e.meshed,
                                "identity": e.identity, "tls": tls_json(e.tls.as_ref()),
                            })
                        })
                        .collect();
                    json!({ "port": p.port, "name": p.name, "endpoints": endpoints })
                })
                .collect();
            json!({
                "fqdn": d.fqdn, "namespace": d.namespace, "name": d.name,
                "vips": d.vips, "ports": ports,
            })
        })
        .collect();
    let workloads: Vec<Value> = policy
        .workloads
        .iter()
        .map(|w| {
            json!({
                "namespace": w.namespace, "name": w.name, "ips": w.ips, "identity": w.identity,
                "plaintext_by_default": w.plaintext_by_default,
                "exception_ports": w.exception_ports,
            })
        })
        .collect();
    json!({
        "versions": policy.versions,
        "inbound": {
            "default_mode": mode_name(inbound.default_mode),
            "port_modes": port_modes,
            "decided_by": inbound.decided_by,
            "spiffe_id": inbound.spiffe_id,
        },
        "destinations": destinations,
        "workloads": workloads,
        "authorization_policies": authz_json(&policy.authz),
    })
}

/// The AuthorizationPolicies in force, in decision order: name, action and how many rules
/// can match here.
fn authz_json(authz: &crate::policy::authz::WorkloadAuthz) -> Vec<Value> {
    authz
        .policies()
        .iter()
        .map(|p| {
            json!({
                "namespace": p.object.namespace, "name": p.object.name,
                "action": p.action.as_str(), "rules": p.matchable_rules(),
            })
        })
        .collect()
}

async fn config(State(s): State<AdminState>) -> Response {
    let policy = s.shared.policy.borrow().clone();
    match policy {
        Some(p) => json_response(&config_json(&p)),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no policy from the control plane yet\n",
        )
            .into_response(),
    }
}

async fn app_health(
    State(s): State<AdminState>,
    Path((container, kind)): Path<(String, String)>,
) -> Response {
    let Some(probe) = s.probes.get(&container, &kind) else {
        return (StatusCode::NOT_FOUND, "no such probe\n").into_response();
    };
    match app_health::run(probe).await {
        Ok(note) => (StatusCode::OK, format!("{note}\n")).into_response(),
        Err(why) => {
            tracing::debug!(%container, %kind, %why, "app probe failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")).into_response()
        }
    }
}

#[cfg(test)]
#[path = "admin_tests.rs"]
mod tests;
