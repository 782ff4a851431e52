//! The haproxy pair: certificates from a CA built with Palisade's own CA code (P-256 root, P-256
//! leaves with SPIFFE URI SANs, the same shape the mesh issues), and the two configurations.
//! Both sides are TCP mode (L4, like Palisade); the client side dials the server side with its
//! client certificate and verifies the server's against the root, the server side requires and
//! verifies the client's; TLS 1.3 only; no session resumption on either side, so every new
//! connection is a full handshake (Palisade does not resume either).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use palisade::ca::authority::{IssuancePolicy, SigningCa, generate_root};
use palisade::ca::pem;
use palisade::ca::spiffe::Identity;

/// The client-side haproxy's listeners, on the client pod's loopback (a sidecar's place).
pub const CLIENT_HTTP_PORT: u16 = 18080;
/// The client-side bulk listener.
pub const CLIENT_BULK_PORT: u16 = 18081;
/// The client-side listener of the plaintext reference pair (HTTP only, no TLS at all).
pub const CLIENT_PLAIN_PORT: u16 = 18090;
/// The server-side listener of the plaintext reference pair.
pub const SERVER_PLAIN_PORT: u16 = 18090;
/// The server-side haproxy's TLS listener for HTTP, on the server pod's address.
pub const SERVER_HTTP_PORT: u16 = 18443;
/// The server-side TLS listener for the bulk source.
pub const SERVER_BULK_PORT: u16 = 18444;

/// Where the PEM files are.
pub struct Pki {
    /// The root certificate (`ca-file`).
    pub ca: PathBuf,
    /// Client leaf + key (`crt` on the client side's `server` line).
    pub client: PathBuf,
    /// Server leaf + key (`crt` on the server side's `bind`).
    pub server: PathBuf,
}

/// Makes a root and two leaves under `dir`.
pub fn pki(dir: &Path) -> anyhow::Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let now = SystemTime::now();
    let (root_key, root_pem) = generate_root(now).context("root")?;
    let root = pem::parse_certs(root_pem.as_bytes())
        .map_err(anyhow::Error::msg)
        .context("root PEM")?
        .into_iter()
        .next()
        .context("no root certificate")?;
    let signing = SigningCa::new(&root_key, root, vec![]).context("signer")?;
    let leaf = |ns: &str, sa: &str, file: &str| -> anyhow::Result<PathBuf> {
        let key = rcgen::KeyPair::generate().context("key")?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .context("CSR")?
            .pem()
            .context("CSR PEM")?;
        let id = Identity::new(ns, sa).context("identity")?;
        let issued = signing
            .issue_workload(&IssuancePolicy::default(), &id, &csr, 0, now)
            .context("issuing")?;
        // Leaf and intermediates (not the root, which the peer has), then the key.
        let mut text = String::new();
        let n = issued.chain_pem.len().saturating_sub(1).max(1);
        for cert in issued.chain_pem.iter().take(n) {
            text.push_str(cert);
        }
        text.push_str(&key.serialize_pem());
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let pki = Pki {
        ca: dir.join("ca.pem"),
        client: leaf("bench", "client", "client.pem")?,
        server: leaf("bench", "web", "server.pem")?,
    };
    std::fs::write(&pki.ca, root_pem)?;
    Ok(pki)
}

const GLOBAL: &str = "global\n    maxconn 8000\n    nbthread 2\n    tune.ssl.cachesize 0\n    log stderr format short local0 err\n\ndefaults\n    mode tcp\n    log global\n    timeout connect 5s\n    timeout client 600s\n    timeout server 600s\n\n";

/// The client side: plaintext from the app on loopback, mTLS to the server side.
pub fn client_config(pki: &Pki, server_ip: Ipv4Addr) -> String {
    let tls = format!(
        "ssl crt {} ca-file {} verify required ssl-min-ver TLSv1.3 no-ssl-reuse",
        pki.client.display(),
        pki.ca.display()
    );
    let mut cfg = GLOBAL.to_string();
    for (name, listen, upstream) in [
        ("http", CLIENT_HTTP_PORT, SERVER_HTTP_PORT),
        ("bulk", CLIENT_BULK_PORT, SERVER_BULK_PORT),
    ] {
        cfg.push_str(&format!(
            "listen {name}\n    bind 127.0.0.1:{listen}\n    server up {server_ip}:{upstream} {tls}\n\n"
        ));
    }
    // The reference: the same two hops with no TLS, to tell the cost of two more processes on
    // the path from the cost of TLS.
    cfg.push_str(&format!(
        "listen plain\n    bind 127.0.0.1:{CLIENT_PLAIN_PORT}\n    server up {server_ip}:{SERVER_PLAIN_PORT}\n\n"
    ));
    cfg
}

/// The server side: mTLS from the client side (client certificate required and verified),
/// plaintext to the app on loopback.
pub fn server_config(pki: &Pki, server_ip: Ipv4Addr, http_port: u16, bulk_port: u16) -> String {
    let tls = format!(
        "ssl crt {} ca-file {} verify required ssl-min-ver TLSv1.3 no-tls-tickets",
        pki.server.display(),
        pki.ca.display()
    );
    let mut cfg = GLOBAL.to_string();
    for (name, listen, app) in [
        ("http", SERVER_HTTP_PORT, http_port),
        ("bulk", SERVER_BULK_PORT, bulk_port),
    ] {
        cfg.push_str(&format!(
            "listen {name}\n    bind {server_ip}:{listen} {tls}\n    server app 127.0.0.1:{app}\n\n"
        ));
    }
    cfg.push_str(&format!(
        "listen plain\n    bind {server_ip}:{SERVER_PLAIN_PORT}\n    server app 127.0.0.1:{http_port}\n\n"
    ));
    cfg
}
