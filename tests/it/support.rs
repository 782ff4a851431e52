//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file under `tests/fixtures`.
pub fn fixture(relative: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(relative)
}

/// Every YAML document of a file, as JSON values.
pub fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("fixture is readable");
    serde_saphyr::from_multiple::<Value>(&text)
        .expect("fixture is valid YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// Switches an Istio `apiVersion` to Palisade's group, as a user migrating would.
pub fn to_palisade_api(mut doc: Value) -> Value {
    let api = doc["apiVersion"].as_str().unwrap_or_default().to_string();
    let switched = api
        .replace("security.istio.io/", "security.palisade.dev/")
        .replace("networking.istio.io/", "networking.palisade.dev/");
    doc["apiVersion"] = Value::String(switched);
    doc
}

/// Path of the built `palisade` binary.
pub fn palisade_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_palisade"))
}

/// Runs the `palisade` binary; returns (success, stdout, stderr).
pub fn palisade(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(palisade_bin())
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("palisade binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Any free port on 127.0.0.1.
pub fn loopback() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A standalone control plane keeping its state in `dir`, every listener on a free loopback port.
pub fn standalone_config(dir: &Path) -> palisade::server::Config {
    palisade::server::Config {
        state_dir: Some(dir.to_path_buf()),
        config_dir: Some(dir.join("config")),
        grpc_addr: loopback(),
        webhook_addr: loopback(),
        monitor_addr: loopback(),
        ..palisade::server::Config::default()
    }
}

/// Records that test `name` could not run here, and why, as a `SKIPPED: <name>: <why>` line
/// that `make test` counts as skipped (and takes off the passed count, since the test then
/// returns and libtest counts it as passed). Written straight to the process's stderr, not
/// through `eprintln!`, so libtest's output capture cannot hide it under `cargo test -q`.
pub fn skipped(name: &str, why: &str) {
    use std::io::Write as _;
    let line = format!("\nSKIPPED: {name}: {why}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}
