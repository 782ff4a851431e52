//! xDS metrics (`palisade_xds_...`): connected streams, pushes, push latency, NACKs and refused
//! streams, by service (`ads`, `sds`) and, where it applies, resource type.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The discovery service of a stream.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum XdsService {
    /// Policy distribution (AggregatedDiscoveryService).
    Ads,
    /// Envoy SDS (SecretDiscoveryService).
    Sds,
}

impl XdsService {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ads => "ads",
            Self::Sds => "sds",
        }
    }
}

/// `service` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: &'static str,
}

/// `service` and `type` (the last segment of a served type URL, e.g. `InboundPolicy`; only
/// served types are counted, so the set is closed).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub service: &'static str,
    pub r#type: String,
}

/// `service` and `reason` of a refused or failed stream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub service: &'static str,
    pub reason: &'static str,
}

type HistogramFamily = Family<ServiceLabel, Histogram, fn() -> Histogram>;

/// Push latency buckets: 50 µs to about 1.6 s.
fn push_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// Handles shared by every stream (cheap clones of the same atomics).
#[derive(Clone, Debug)]
pub struct XdsMetrics {
    /// Streams open now.
    pub streams: Family<ServiceLabel, Gauge>,
    /// Responses sent.
    pub pushes: Family<TypeLabels, Counter>,
    /// From the moment a stream sees a change (view, bundle, renewal, subscription) to the
    /// moment the response is handed to the transport.
    pub push_seconds: HistogramFamily,
    /// NACKs received.
    pub nacks: Family<TypeLabels, Counter>,
    /// Streams refused or ended by the server, by reason.
    pub refused: Family<RefusedLabels, Counter>,
}

impl Default for XdsMetrics {
    fn default() -> Self {
        Self {
            streams: Family::default(),
            pushes: Family::default(),
            push_seconds: Family::new_with_constructor(push_histogram),
            nacks: Family::default(),
            refused: Family::default(),
        }
    }
}

/// The label value of a type URL: its last `.`-separated segment.
fn short_type(type_url: &str) -> String {
    type_url.rsplit('.').next().unwrap_or(type_url).to_string()
}

/// Counts one open stream while alive.
#[derive(Debug)]
pub struct StreamGuard(Gauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl XdsMetrics {
    /// Registers the handles (names get the registry's `palisade_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "xds_connected_streams",
            "xDS streams open now, by service (ads, sds)",
            self.streams.clone(),
        );
        registry.register(
            "xds_pushes",
            "xDS responses sent, by service and resource type",
            self.pushes.clone(),
        );
        registry.register(
            "xds_push_duration_seconds",
            "Time from a change seen by a stream to its response handed to the transport",
            self.push_seconds.clone(),
        );
        registry.register(
            "xds_nacks",
            "xDS responses rejected by clients (NACK), by service and resource type",
            self.nacks.clone(),
        );
        registry.register(
            "xds_refused_streams",
            "xDS streams refused or ended by the server, by service and reason",
            self.refused.clone(),
        );
    }

    /// Counts a stream as open until the guard is dropped.
    pub fn stream_opened(&self, service: XdsService) -> StreamGuard {
        let gauge = self
            .streams
            .get_or_create(&ServiceLabel {
                service: service.as_str(),
            })
            .clone();
        gauge.inc();
        StreamGuard(gauge)
    }

    /// One response of `type_url` sent, `seconds` after the change that caused it.
    pub fn pushed(&self, service: XdsService, type_url: &str, seconds: f64) {
        self.pushes
            .get_or_create(&TypeLabels {
                service: service.as_str(),
                r#type: short_type(type_url),
            })
            .inc();
        self.push_seconds
            .get_or_create(&ServiceLabel {
                service: service.as_str(),
            })
            .observe(seconds);
    }

    /// One NACK of `type_url`.
    pub fn nacked(&self, service: XdsService, type_url: &str) {
        self.nacks
            .get_or_create(&TypeLabels {
                service: service.as_str(),
                r#type: short_type(type_url),
            })
            .inc();
    }

    /// One stream refused or ended for `reason`.
    pub fn refuse(&self, service: XdsService, reason: &'static str) {
        self.refused
            .get_or_create(&RefusedLabels {
                service: service.as_str(),
                reason,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_stream_gauge() {
        let m = XdsMetrics::default();
        let mut registry = Registry::with_prefix("palisade");
        m.register(&mut registry);
        let guard = m.stream_opened(XdsService::Ads);
        let _sds = m.stream_opened(XdsService::Sds);
        m.pushed(
            XdsService::Ads,
            "type.googleapis.com/palisade.v1.InboundPolicy",
            0.001,
        );
        m.nacked(
            XdsService::Sds,
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        );
        m.refuse(XdsService::Ads, "permission_denied");
        drop(guard);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for needle in [
            "palisade_xds_connected_streams{service=\"ads\"} 0",
            "palisade_xds_connected_streams{service=\"sds\"} 1",
            "palisade_xds_pushes_total{service=\"ads\",type=\"InboundPolicy\"} 1",
            "palisade_xds_nacks_total{service=\"sds\",type=\"Secret\"} 1",
            "palisade_xds_push_duration_seconds_count{service=\"ads\"} 1",
            "palisade_xds_refused_streams_total{service=\"ads\",reason=\"permission_denied\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
