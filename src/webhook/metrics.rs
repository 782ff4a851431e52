//! Webhook metrics: injections by result and reason, and request latency.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::SkipReason;

/// `result` is `injected`, `skipped`, `denied` or `error`; `reason` is set for `skipped`
/// (a [`SkipReason`] name) and empty otherwise, so the label set stays small and closed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InjectionLabels {
    pub result: &'static str,
    pub reason: &'static str,
}

/// Handles shared by every request (cheap clones of the same atomics).
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    pub injections: Family<InjectionLabels, Counter>,
    pub request_seconds: Histogram,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        Self {
            injections: Family::default(),
            // 50 µs to about 1.6 s: the target is well under 2 ms, the API server gives up at 10 s.
            request_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
        }
    }
}

impl WebhookMetrics {
    /// Registers the handles (names get the registry's `palisade_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "webhook_injections",
            "Pods seen by the injection webhook, by result (and skip reason)",
            self.injections.clone(),
        );
        registry.register(
            "webhook_request_duration_seconds",
            "Injection webhook request latency, body read to response",
            self.request_seconds.clone(),
        );
    }

    fn count(&self, result: &'static str, reason: &'static str) {
        self.injections
            .get_or_create(&InjectionLabels { result, reason })
            .inc();
    }

    /// One pod injected.
    pub fn injected(&self) {
        self.count("injected", "");
    }

    /// One pod admitted unchanged.
    pub fn skipped(&self, reason: SkipReason) {
        self.count("skipped", reason.as_str());
    }

    /// One pod refused.
    pub fn denied(&self) {
        self.count("denied", "");
    }

    /// One request that could not be answered with a decision (malformed review, timeout).
    pub fn error(&self) {
        self.count("error", "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_prefix_and_labels() {
        let m = WebhookMetrics::default();
        let mut registry = Registry::with_prefix("palisade");
        m.register(&mut registry);
        m.injected();
        m.skipped(SkipReason::HostNetwork);
        m.denied();
        m.error();
        m.request_seconds.observe(0.001);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for needle in [
            "palisade_webhook_injections_total{result=\"injected\",reason=\"\"} 1",
            "palisade_webhook_injections_total{result=\"skipped\",reason=\"host_network\"} 1",
            "palisade_webhook_injections_total{result=\"denied\",reason=\"\"} 1",
            "palisade_webhook_injections_total{result=\"error\",reason=\"\"} 1",
            "palisade_webhook_request_duration_seconds_count 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
