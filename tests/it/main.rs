//! Integration tests: one binary with modules (one per subsystem), to keep link time down.

mod ca;
mod ca_cluster;
mod certificate_cli;
mod chart;
mod crds;
mod explain;
mod explain_authz;
mod grpc_limits;
mod init_netns;
mod proxy_agent;
mod proxy_datapath;
mod proxy_netns;
mod proxy_pki;
mod sds;
mod standalone_xds;
mod support;
mod webhook;
mod webhook_https;
mod webhook_props;
mod xds;
mod xds_bad_input;
mod xds_harness;
