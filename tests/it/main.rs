//! Integration tests: one binary, one module per subsystem.

mod ca;
mod ca_cluster;
