//! Prometheus metrics of the control plane (text format at `/metrics`, prefix `palisade_`).
//!
//! Handles are cheap clones sharing the same atomics, so each subsystem keeps its own copy
//! and the registry only exists to encode them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A `reason` label (why a certificate was refused).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// A `result` label (outcome of a TokenReview).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// CA metrics.
#[derive(Clone, Debug)]
pub struct CaMetrics {
    pub issued: Counter,
    pub refused: Family<ReasonLabel, Counter>,
    pub issuance_seconds: Histogram,
    pub root_expiry_seconds: Gauge,
    pub serving_expiry_seconds: Gauge,
}

impl CaMetrics {
    /// Counts one refusal with its reason.
    pub fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }
}

/// Token authentication metrics.
#[derive(Clone, Debug)]
pub struct AuthMetrics {
    pub token_reviews: Family<ResultLabel, Counter>,
    pub cache_hits: Counter,
    pub review_seconds: Histogram,
}

impl AuthMetrics {
    /// Counts one TokenReview call with its outcome.
    pub fn review(&self, result: &str) {
        self.token_reviews
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }
}

/// Connection metrics of the gRPC listener.
#[derive(Clone, Debug, Default)]
pub struct ListenerMetrics {
    /// Connections closed on arrival because the connection cap was reached.
    pub connections_rejected: Counter,
    /// Connections open now (handshaking or established).
    pub connections_open: prometheus_client::metrics::gauge::Gauge,
}

/// Latency buckets from 0.1 ms to about 3 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

impl Default for CaMetrics {
    fn default() -> Self {
        Self {
            issued: Counter::default(),
            refused: Family::default(),
            issuance_seconds: latency_histogram(),
            root_expiry_seconds: Gauge::default(),
            serving_expiry_seconds: Gauge::default(),
        }
    }
}

impl Default for AuthMetrics {
    fn default() -> Self {
        Self {
            token_reviews: Family::default(),
            cache_hits: Counter::default(),
            review_seconds: latency_histogram(),
        }
    }
}

/// All metrics and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub ca: CaMetrics,
    pub auth: AuthMetrics,
    pub webhook: crate::webhook::WebhookMetrics,
    /// Inventory sources: config-file errors, watch restarts.
    pub sources: crate::controller::SourceMetrics,
    /// xDS streams (ADS, SDS): connections, pushes, NACKs.
    pub xds: crate::xds::XdsMetrics,
    pub grpc: ListenerMetrics,
    pub reconcile: crate::controller::metrics::ReconcileMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let ca = CaMetrics::default();
        let auth = AuthMetrics::default();
        let mut registry = Registry::with_prefix("palisade");
        registry.register(
            "ca_certs_issued",
            "Workload certificates issued",
            ca.issued.clone(),
        );
        registry.register(
            "ca_certs_refused",
            "Certificate requests refused, by reason",
            ca.refused.clone(),
        );
        registry.register(
            "ca_issuance_duration_seconds",
            "Time to authenticate and sign one certificate request",
            ca.issuance_seconds.clone(),
        );
        registry.register(
            "ca_root_cert_expiry_timestamp_seconds",
            "NotAfter of the CA's root certificate (unix seconds)",
            ca.root_expiry_seconds.clone(),
        );
        registry.register(
            "ca_serving_cert_expiry_timestamp_seconds",
            "NotAfter of the control plane's serving certificate (unix seconds)",
            ca.serving_expiry_seconds.clone(),
        );
        registry.register(
            "auth_token_reviews",
            "TokenReview calls to the API server, by result",
            auth.token_reviews.clone(),
        );
        registry.register(
            "auth_token_cache_hits",
            "Token authentications answered from the cache",
            auth.cache_hits.clone(),
        );
        registry.register(
            "auth_token_review_duration_seconds",
            "TokenReview call latency",
            auth.review_seconds.clone(),
        );
        let webhook = crate::webhook::WebhookMetrics::default();
        webhook.register(&mut registry);
        let sources = crate::controller::SourceMetrics::default();
        sources.register(&mut registry);
        let xds = crate::xds::XdsMetrics::default();
        xds.register(&mut registry);
        let grpc = ListenerMetrics::default();
        registry.register(
            "grpc_connections_rejected",
            "gRPC connections closed on arrival because --max-grpc-connections were open",
            grpc.connections_rejected.clone(),
        );
        registry.register(
            "grpc_connections_open",
            "gRPC connections open (handshaking or established)",
            grpc.connections_open.clone(),
        );
        let reconcile = crate::controller::metrics::ReconcileMetrics::default();
        reconcile.register(&mut registry);
        Self {
            registry,
            ca,
            auth,
            webhook,
            sources,
            xds,
            grpc,
            reconcile,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let m = Metrics::new();
        m.ca.issued.inc();
        m.ca.refuse("ttl_over_max");
        m.auth.review("authenticated");
        m.ca.root_expiry_seconds.set(42);
        m.sources.config_errors.inc();
        m.sources.watch_restart("Pod");
        m.grpc.connections_rejected.inc();
        let text = m.encode();
        for needle in [
            "palisade_ca_certs_issued_total 1",
            "palisade_ca_certs_refused_total{reason=\"ttl_over_max\"} 1",
            "palisade_auth_token_reviews_total{result=\"authenticated\"} 1",
            "palisade_ca_root_cert_expiry_timestamp_seconds 42",
            "palisade_ca_issuance_duration_seconds_bucket",
            "palisade_auth_token_cache_hits_total 0",
            "palisade_controller_config_errors_total 1",
            "palisade_controller_watch_restarts_total{kind=\"Pod\"} 1",
            "palisade_grpc_connections_rejected_total 1",
            "palisade_grpc_connections_open 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
