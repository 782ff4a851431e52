//! gRPC services of the control plane (tonic): the Istio-compatible CA service, SDS, and policy
//! distribution over ADS.

pub mod ads;
pub mod ads_wire;
pub mod ca_service;
pub mod metrics;
pub mod node;
pub mod registry;
pub mod sds;
pub mod sotw;
pub mod stream;
pub mod view;
pub mod views;

/// Messages and service stubs generated from `proto/` at build time (protox, no protoc).
pub mod proto {
    /// `istio.v1.auth`: IstioCertificateService (wire-compatible with Istio's CA).
    #[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
    pub mod istio_v1_auth {
        tonic::include_proto!("istio.v1.auth");
    }

    /// `grpc.health.v1`: the health checking protocol, for applications' gRPC probes that the
    /// proxy runs.
    #[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
    pub mod grpc_health_v1 {
        tonic::include_proto!("grpc.health.v1");
    }

    /// `palisade.v1`: the policy-distribution resources carried over ADS (see
    /// `proto/palisade/v1/mesh.proto` for the contract a proxy implements).
    #[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
    pub mod palisade_v1 {
        tonic::include_proto!("palisade.v1");
    }
}

pub use ads::AdsService;
pub use ca_service::CaService;
pub use metrics::XdsMetrics;
pub use sds::SdsService;
