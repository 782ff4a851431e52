//! The controller's cluster writers and what coordinates them. The controller runs as several
//! replicas; everything that writes cluster state (the webhook caBundle first, later status,
//! root-cert ConfigMaps and the CA Secret) runs only on the replica that holds the
//! [`leader`] Lease.

pub mod inventory;
pub mod leader;
pub mod metrics;
pub mod root_configmap;
pub mod status;

/// Field manager recorded on the controller's writes.
pub const FIELD_MANAGER: &str = "palisade-controller";
