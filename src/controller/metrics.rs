//! Metrics of the controller's cluster writers: status writes and root-cert ConfigMap writes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// `kind` is `PeerAuthentication` or `DestinationRule`; `result` is `applied`, `not_found`
/// (deleted before the write: not an error) or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusWriteLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

/// `operation` is `create` or `replace`; `result` is `ok`, `conflict` (the object changed or
/// appeared meanwhile; the watch brings the new state), `not_found`, `namespace_terminating`
/// or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigMapWriteLabels {
    pub operation: &'static str,
    pub result: &'static str,
}

/// Handles shared by the status and ConfigMap reconcilers (cheap clones of the same atomics).
#[derive(Clone, Debug, Default)]
pub struct ReconcileMetrics {
    /// `palisade_controller_status_writes_total{kind,result}`.
    pub status_writes: Family<StatusWriteLabels, Counter>,
    /// `palisade_controller_configmap_writes_total{operation,result}`.
    pub configmap_writes: Family<ConfigMapWriteLabels, Counter>,
}

impl ReconcileMetrics {
    /// Registers the handles (names get the registry's `palisade_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "controller_status_writes",
            "Status subresource writes of policy objects, by kind and result",
            self.status_writes.clone(),
        );
        registry.register(
            "controller_configmap_writes",
            "Writes of the palisade-ca-root-cert ConfigMaps, by operation and result",
            self.configmap_writes.clone(),
        );
    }

    /// Counts one status write.
    pub fn status_write(&self, kind: &'static str, result: &'static str) {
        self.status_writes
            .get_or_create(&StatusWriteLabels { kind, result })
            .inc();
    }

    /// Counts one ConfigMap write.
    pub fn configmap_write(&self, operation: &'static str, result: &'static str) {
        self.configmap_writes
            .get_or_create(&ConfigMapWriteLabels { operation, result })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_prefix_and_labels() {
        let m = ReconcileMetrics::default();
        let mut registry = Registry::with_prefix("palisade");
        m.register(&mut registry);
        m.status_write("PeerAuthentication", "applied");
        m.status_write("DestinationRule", "not_found");
        m.configmap_write("create", "ok");
        m.configmap_write("replace", "conflict");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for needle in [
            "palisade_controller_status_writes_total{kind=\"PeerAuthentication\",result=\"applied\"} 1",
            "palisade_controller_status_writes_total{kind=\"DestinationRule\",result=\"not_found\"} 1",
            "palisade_controller_configmap_writes_total{operation=\"create\",result=\"ok\"} 1",
            "palisade_controller_configmap_writes_total{operation=\"replace\",result=\"conflict\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
