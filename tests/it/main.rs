//! Integration tests: one binary with modules, to keep link time down.

mod crds;
mod explain;
mod support;
