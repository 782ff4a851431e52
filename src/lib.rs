//! Palisade: a zero-trust service-mesh security control plane for Kubernetes.
//!
//! The crate is one library with thin binaries on top. Modules follow the architecture:
//! `api` (CRD types), `policy` (pure policy engine), `ca` (certificate authority), `auth`
//! (token authenticators), `xds` (gRPC services), `server` (the running control plane),
//! `cli` (subcommands).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api;
pub mod auth;
pub mod ca;
pub mod cli;
pub mod controller;
pub mod init;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod webhook;
pub mod xds;
