//! `palisade token` + `palisade certificate` against a running standalone control plane: the
//! commands a person uses to check a CA by hand.

use std::process::Command;

use palisade::server;

use crate::support::{self, palisade_bin};

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(palisade_bin())
        .args(args)
        .output()
        .expect("palisade runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_then_certificate_gets_the_tokens_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = server::start(support::standalone_config(dir.path()))
        .await
        .expect("control plane starts");
    let state = dir.path().to_string_lossy().into_owned();
    let ca_addr = format!("localhost:{}", running.grpc_addr.port());
    let root = dir.path().join(server::ROOT_CERT_FILE);
    let root = root.to_string_lossy().into_owned();
    let out_dir = dir.path().join("issued");
    let out = out_dir.to_string_lossy().into_owned();

    let result = tokio::task::spawn_blocking(move || {
        let (ok, token, err) = run(&[
            "token",
            "--state-dir",
            &state,
            "--namespace",
            "shop",
            "--service-account",
            "payments",
        ]);
        assert!(ok, "token: {err}");
        let token_path = format!("{state}/token");
        std::fs::write(&token_path, token).expect("write token");
        let good = run(&[
            "certificate",
            "--ca-addr",
            &ca_addr,
            "--ca-root",
            &root,
            "--token-file",
            &token_path,
            "--key-type",
            "ecdsa-p384",
            "--ttl",
            "2h",
            "--out-dir",
            &out,
        ]);
        std::fs::write(&token_path, "not-a-token").expect("write token");
        let bad = run(&[
            "certificate",
            "--ca-addr",
            &ca_addr,
            "--ca-root",
            &root,
            "--token-file",
            &token_path,
        ]);
        (good, bad, root)
    })
    .await
    .expect("client thread");
    let ((ok, stdout, stderr), (bad_ok, _, bad_err), root) = result;
    assert!(ok, "certificate: {stderr}");
    assert!(
        stdout.contains("spiffe://cluster.local/ns/shop/sa/payments"),
        "{stdout}"
    );
    assert!(!bad_ok, "a bad token must be refused");
    assert!(bad_err.contains("Unauthenticated"), "{bad_err}");

    // An independent reader agrees: the chain verifies against the trust bundle.
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile", &root])
        .arg(out_dir.join("cert-chain.pem"))
        .output()
        .expect("openssl runs");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(out_dir.join("key.pem"))
            .expect("key written")
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
    running.shutdown().await.expect("clean shutdown");
}
