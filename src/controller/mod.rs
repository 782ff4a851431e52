//! The controller's cluster writers and what coordinates them. The controller runs as several
//! replicas; everything that writes cluster state (the webhook caBundle first, later status,
//! root-cert ConfigMaps and the CA Secret) runs only on the replica that holds the
//! [`leader`] Lease.
//!
//! The [`inventory`] every part reads comes from a [`inventory::Source`]: the Kubernetes
//! watchers ([`kube_source::KubeSource`]) or the standalone config directory
//! ([`dir_source::DirSource`]).

mod dir_inventory;
pub mod dir_source;
pub mod inventory;
pub mod kube_records;
pub mod kube_source;
pub mod leader;
pub mod metrics;
pub mod root_configmap;
mod source_metrics;
pub mod status;

pub use source_metrics::{KindLabel, SourceMetrics};

/// Field manager recorded on the controller's writes.
pub const FIELD_MANAGER: &str = "palisade-controller";
