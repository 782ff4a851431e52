//! Metrics of the inventory sources (Kubernetes watchers, standalone config directory).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// A `kind` label: which watcher (e.g. `Pod`, `PeerAuthentication`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The watched kind.
    pub kind: &'static str,
}

/// Handles shared by both sources; clones share the same counters.
#[derive(Clone, Debug, Default)]
pub struct SourceMetrics {
    /// Config files (or the config directory) that could not be read or parsed; each failing
    /// version of a file counts once.
    pub config_errors: Counter,
    /// Watch errors after which a watcher backed off and restarted, by kind.
    pub watch_restarts: Family<KindLabel, Counter>,
}

impl SourceMetrics {
    /// Registers the handles (names get the registry's `palisade_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "controller_config_errors",
            "Standalone config files that could not be read or parsed (the last good state stays in force)",
            self.config_errors.clone(),
        );
        registry.register(
            "controller_watch_restarts",
            "Kubernetes watch errors after which the watcher backed off and restarted, by kind",
            self.watch_restarts.clone(),
        );
    }

    /// Counts one watch restart of `kind`.
    pub fn watch_restart(&self, kind: &'static str) {
        self.watch_restarts.get_or_create(&KindLabel { kind }).inc();
    }

    /// Restarts counted so far for `kind`.
    pub fn watch_restarts_of(&self, kind: &'static str) -> u64 {
        self.watch_restarts.get_or_create(&KindLabel { kind }).get()
    }
}
