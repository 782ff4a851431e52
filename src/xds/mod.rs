//! gRPC services of the control plane (tonic). For now: the Istio-compatible CA service.

pub mod ca_service;

/// Messages and service stubs generated from `proto/` at build time (protox, no protoc).
pub mod proto {
    /// `istio.v1.auth`: IstioCertificateService (wire-compatible with Istio's CA).
    #[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
    pub mod istio_v1_auth {
        tonic::include_proto!("istio.v1.auth");
    }
}

pub use ca_service::CaService;
