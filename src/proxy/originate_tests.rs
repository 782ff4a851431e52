use std::io::Write as _;
use std::time::{Duration, SystemTime};

use rcgen::SanType;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::proxy::test_pki::TestCa;

fn rule(mode: pb::client_tls::Mode) -> pb::ClientTls {
    pb::ClientTls {
        mode: mode as i32,
        ..Default::default()
    }
}

fn file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f
}

fn path(f: &tempfile::NamedTempFile) -> String {
    f.path().to_str().unwrap().to_string()
}

#[test]
fn rules_that_cannot_be_honoured_fail_closed() {
    use pb::client_tls::Mode;
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let ca = TestCa::new();
    let ca_file = file(crate::ca::pem::cert_to_pem(&ca.root).as_bytes());
    let big = file(&vec![b'a'; MAX_FILE_BYTES as usize + 1]);
    let not_pem = file(b"hello");
    let with = |f: &dyn Fn(&mut pb::ClientTls)| {
        let mut r = rule(Mode::Simple);
        r.ca_certificates = path(&ca_file);
        f(&mut r);
        build(&r, ip)
    };
    let err = |r: Result<Originated, OriginateError>| r.map(|_| ()).unwrap_err();
    assert!(matches!(
        err(with(&|r| r.credential_name = "secret".into())),
        OriginateError::CredentialName(_)
    ));
    assert!(matches!(
        err(with(&|r| r.ca_crl = "/crl.pem".into())),
        OriginateError::Crl(_)
    ));
    assert!(matches!(
        err(with(&|r| r.mode = Mode::Mutual as i32)),
        OriginateError::MissingClientCredentials
    ));
    assert!(matches!(
        err(with(&|r| r.ca_certificates = path(&big))),
        OriginateError::File { message, .. } if message.contains("larger than")
    ));
    assert!(matches!(
        err(with(&|r| r.ca_certificates = path(&not_pem))),
        OriginateError::File { .. }
    ));
    assert!(matches!(
        err(with(&|r| r.ca_certificates = "/nonexistent/ca.pem".into())),
        OriginateError::File { .. }
    ));
    assert!(matches!(
        err(with(&|r| r.sni = "not a name!".into())),
        OriginateError::BadSni(_)
    ));
    let ok = with(&|r| r.sni = "db.example.com".into()).unwrap();
    assert_eq!(ok.server_name.to_str(), "db.example.com");
    let by_ip = with(&|_| {}).unwrap();
    assert_eq!(by_ip.server_name, ServerName::IpAddress(ip.into()));
}

/// A TLS server presenting a leaf with `dns` from `ca`; the client's handshake result.
async fn originate_to(ca: &TestCa, dns: &str, r: &pb::ClientTls) -> std::io::Result<()> {
    let leaf = ca.custom(
        vec![SanType::DnsName(dns.try_into().unwrap())],
        SystemTime::now() - Duration::from_secs(60),
        Duration::from_secs(3600),
    );
    let server = rustls::ServerConfig::builder_with_provider(super::super::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
        .unwrap();
    let o = build(r, "127.0.0.1".parse().unwrap()).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (_, c) = tokio::join!(
        TlsAcceptor::from(Arc::new(server)).accept(a),
        TlsConnector::from(o.config).connect(o.server_name, b)
    );
    c.map(|_| ())
}

#[tokio::test]
async fn simple_verifies_the_ca_and_the_names() {
    use pb::client_tls::Mode;
    let ca = TestCa::new();
    let ca_file = file(crate::ca::pem::cert_to_pem(&ca.root).as_bytes());
    let mut r = rule(Mode::Simple);
    r.ca_certificates = path(&ca_file);
    r.sni = "db.example.com".into();
    assert!(originate_to(&ca, "db.example.com", &r).await.is_ok());
    assert!(
        originate_to(&ca, "other.example.com", &r).await.is_err(),
        "hostname check on sni"
    );
    r.expected_identities = vec!["other.example.com".into()];
    assert!(
        originate_to(&ca, "other.example.com", &r).await.is_ok(),
        "subjectAltNames instead"
    );
    assert!(
        originate_to(&ca, "db.example.com", &r).await.is_err(),
        "SAN mismatch"
    );
    let foreign = TestCa::new();
    assert!(
        originate_to(&foreign, "other.example.com", &r)
            .await
            .is_err(),
        "foreign CA"
    );
    let mut skip = rule(Mode::Simple);
    skip.insecure_skip_verify = true;
    skip.sni = "db.example.com".into();
    assert!(
        originate_to(&foreign, "anything.example", &skip)
            .await
            .is_ok()
    );
}

#[test]
fn the_cache_reuses_within_the_ttl_and_is_bounded() {
    let ca = TestCa::new();
    let ca_file = file(crate::ca::pem::cert_to_pem(&ca.root).as_bytes());
    let cache = OriginateCache::default();
    let mut r = rule(pb::client_tls::Mode::Simple);
    r.ca_certificates = path(&ca_file);
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let a = cache.get(&r, ip).unwrap();
    let b = cache.get(&r, ip).unwrap();
    assert!(Arc::ptr_eq(&a.config, &b.config));
    for i in 0..(MAX_CACHED + 3) {
        r.sni = format!("h{i}.example");
        cache.get(&r, ip).unwrap();
        assert!(cache.entries.lock().unwrap().len() <= MAX_CACHED);
    }
}
