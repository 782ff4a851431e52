//! Sidecar injection: the mutating admission webhook (semantics.md "Sidecar injection").
//!
//! [`inject::decide`] is the mutation as a pure function (Pod + namespace labels + config ->
//! JSONPatch, skip or deny); [`review`] wraps it in `admission.k8s.io/v1` AdmissionReview
//! JSON; [`server`] serves that over HTTPS; [`ca_bundle`] keeps the webhook configuration's
//! `caBundle` equal to the trust bundle; [`namespaces`] supplies namespace labels.

pub mod ca_bundle;
pub mod config;
pub mod containers;
pub mod inject;
pub mod metrics;
pub mod namespaces;
pub mod probes;
pub mod review;
pub mod server;
pub mod traffic;

pub use config::InjectionConfig;
pub use inject::{Decision, SkipReason, decide};
pub use metrics::WebhookMetrics;
