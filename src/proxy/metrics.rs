//! The proxy's metrics (`palisade_proxy_...`, text format at the admin port's `/metrics`).
//! Handles are cheap clones of the same atomics: the listeners and the agent each keep one.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Which listener a connection came through.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// How a connection's bytes travelled between the proxies.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum TlsMode {
    /// Mesh mutual TLS (Palisade's ALPN) terminated or originated here.
    Mesh,
    /// Passed through untouched (plaintext, or the application's own TLS).
    Passthrough,
    /// TLS originated to a non-mesh server (DestinationRule SIMPLE / MUTUAL).
    Originated,
}

impl TlsMode {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mesh => "mesh",
            Self::Passthrough => "passthrough",
            Self::Originated => "originated",
        }
    }
}

/// `direction` and `tls` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub direction: &'static str,
    pub tls: &'static str,
}

/// `direction` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

/// `direction` and `reason` labels (a closed set of static reasons).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub direction: &'static str,
    pub reason: &'static str,
}

/// `policy` label (`<namespace>/<name>` of an AuthorizationPolicy).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    pub policy: String,
}

/// Every handle the proxy updates.
#[derive(Clone, Debug, Default)]
pub struct ProxyMetrics {
    /// Connections accepted, by direction and how they travelled.
    pub connections: Family<ConnectionLabels, Counter>,
    /// Connections open now, by direction.
    pub open: Family<DirectionLabel, Gauge>,
    /// Connections refused or failed before any byte reached the other side, by reason
    /// (e.g. `no_client_certificate`, `untrusted_certificate`, `identity_mismatch`,
    /// `plaintext_refused`, `handshake_timeout`, `connect_failed`).
    pub failures: Family<FailureLabels, Counter>,
    /// Bytes received from the connecting side, by direction.
    pub bytes_received: Family<DirectionLabel, Counter>,
    /// Bytes sent to the connecting side, by direction.
    pub bytes_sent: Family<DirectionLabel, Counter>,
    /// Seconds until the current workload certificate expires (negative once expired).
    pub certificate_expiry_seconds: Gauge,
    /// Certificates obtained (the first one included).
    pub renewals: Counter,
    /// Failed attempts to obtain a certificate.
    pub renewal_failures: Counter,
    /// Connections refused by an AuthorizationPolicy, by policy.
    pub authz_denied: Family<PolicyLabel, Counter>,
}

impl ProxyMetrics {
    /// Counts an accepted connection.
    pub fn connection(&self, direction: Direction, tls: TlsMode) {
        self.connections
            .get_or_create(&ConnectionLabels {
                direction: direction.as_str(),
                tls: tls.as_str(),
            })
            .inc();
    }

    /// Counts a failure with its reason.
    pub fn failure(&self, direction: Direction, reason: &'static str) {
        self.failures
            .get_or_create(&FailureLabels {
                direction: direction.as_str(),
                reason,
            })
            .inc();
    }

    /// Counts a connection an AuthorizationPolicy denied (`policy`: `<ns>/<name>`, or why no
    /// single policy decided).
    pub fn authz_denied(&self, policy: &str) {
        self.authz_denied
            .get_or_create(&PolicyLabel {
                policy: policy.to_string(),
            })
            .inc();
    }

    /// Counts a connection as open until the guard is dropped.
    pub fn opened(&self, direction: Direction) -> OpenGuard {
        let gauge = self
            .open
            .get_or_create(&DirectionLabel {
                direction: direction.as_str(),
            })
            .clone();
        gauge.inc();
        OpenGuard(gauge)
    }

    /// Registers the handles (names get the registry's `palisade_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("proxy");
        sub.register(
            "connections",
            "Connections accepted, by direction and TLS mode",
            self.connections.clone(),
        );
        sub.register(
            "open_connections",
            "Connections open now, by direction",
            self.open.clone(),
        );
        sub.register(
            "connection_failures",
            "Connections refused or failed, by direction and reason",
            self.failures.clone(),
        );
        sub.register(
            "received_bytes",
            "Bytes received from the connecting side, by direction",
            self.bytes_received.clone(),
        );
        sub.register(
            "sent_bytes",
            "Bytes sent to the connecting side, by direction",
            self.bytes_sent.clone(),
        );
        sub.register(
            "certificate_expiry_seconds",
            "Seconds until the workload certificate expires",
            self.certificate_expiry_seconds.clone(),
        );
        sub.register(
            "certificate_renewals",
            "Workload certificates obtained",
            self.renewals.clone(),
        );
        sub.register(
            "certificate_renewal_failures",
            "Failed attempts to obtain a workload certificate",
            self.renewal_failures.clone(),
        );
        sub.register(
            "authz_denied",
            "Connections refused by an AuthorizationPolicy, by policy",
            self.authz_denied.clone(),
        );
    }
}

/// Counts one open connection while alive.
#[derive(Debug)]
pub struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
