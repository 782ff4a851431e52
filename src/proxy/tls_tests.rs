use std::time::{Duration, SystemTime};

use rcgen::SanType;
use rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::proxy::test_pki::{Leaf, TestCa, trust};

const TD: &str = "cluster.local";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/a/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/b/sa/server";

/// A proxy's TLS with `leaf` as its identity, trusting `roots`.
fn mesh(leaf: Option<&Leaf>, id: &str, roots: &[&CertificateDer<'static>]) -> MeshTls {
    let (_, identity) = watch::channel(leaf.map(|l| l.identity(id)));
    let (_, trust) = watch::channel(trust(roots));
    MeshTls::new(identity, trust, TD).unwrap()
}

fn verifier(roots: &[&CertificateDer<'static>]) -> MeshClientVerifier {
    let m = mesh(None, "", roots);
    MeshClientVerifier {
        roots: m.roots.clone(),
        trust_domain: TD.into(),
    }
}

fn identity_error(e: &rustls::Error) -> Option<&PeerIdentityError> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(o)) => o.0.downcast_ref(),
        _ => None,
    }
}

#[test]
fn client_certificates_table() {
    let ca = TestCa::new();
    let foreign = TestCa::new();
    let past = SystemTime::now() - Duration::from_secs(7200);
    let uri = |u: &str| SanType::URI(u.try_into().unwrap());
    type Want = Result<(), Option<PeerIdentityError>>;
    let cases: Vec<(&str, Leaf, Want)> = vec![
        ("issued by the CA", ca.workload("a", "client"), Ok(())),
        ("foreign CA", foreign.workload("a", "client"), Err(None)),
        (
            "expired",
            ca.custom(vec![uri(CLIENT_ID)], past, Duration::from_secs(3600)),
            Err(None),
        ),
        (
            "two URI SANs",
            ca.with_uris(&[CLIENT_ID, SERVER_ID]),
            Err(Some(PeerIdentityError::UriSanCount(2))),
        ),
        (
            "no URI SAN",
            ca.custom(
                vec![SanType::DnsName("client.a".try_into().unwrap())],
                past + Duration::from_secs(3600),
                Duration::from_secs(7200),
            ),
            Err(Some(PeerIdentityError::UriSanCount(0))),
        ),
        (
            "another trust domain",
            ca.with_uris(&["spiffe://evil.example/ns/a/sa/client"]),
            Err(Some(PeerIdentityError::NotMeshId {
                uri: "spiffe://evil.example/ns/a/sa/client".into(),
                trust_domain: TD.into(),
            })),
        ),
        (
            "not a workload ID",
            ca.with_uris(&["spiffe://cluster.local/admin"]),
            Err(Some(PeerIdentityError::NotMeshId {
                uri: "spiffe://cluster.local/admin".into(),
                trust_domain: TD.into(),
            })),
        ),
        (
            "a URI and a DNS name is still one URI",
            ca.custom(
                vec![uri(CLIENT_ID), SanType::DnsName("x.a".try_into().unwrap())],
                past + Duration::from_secs(3600),
                Duration::from_secs(7200),
            ),
            Ok(()),
        ),
    ];
    let v = verifier(&[&ca.root]);
    for (name, leaf, want) in cases {
        let got = v.verify_client_cert(&leaf.chain[0], &leaf.chain[1..], UnixTime::now());
        match (&got, &want) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(detail)) => assert_eq!(identity_error(e), detail.as_ref(), "{name}: {e}"),
            _ => panic!("{name}: got {:?}, want {want:?}", got.map(|_| ())),
        }
    }
    assert!(v.client_auth_mandatory(), "no certificate, no connection");
}

#[test]
fn the_verifier_follows_the_trust_watch() {
    let old = TestCa::new();
    let new = TestCa::new();
    let (_, identity) = watch::channel(None);
    let (tx, rx) = watch::channel(trust(&[&old.root]));
    let m = MeshTls::new(identity, rx, TD).unwrap();
    let v = MeshClientVerifier {
        roots: m.roots.clone(),
        trust_domain: TD.into(),
    };
    let leaf = new.workload("a", "client");
    let verify = || v.verify_client_cert(&leaf.chain[0], &leaf.chain[1..], UnixTime::now());
    assert!(verify().is_err());
    tx.send_replace(trust(&[&old.root, &new.root]));
    assert!(
        verify().is_ok(),
        "a root joining the bundle applies to the next handshake"
    );
    tx.send_replace(trust(&[]));
    assert!(verify().is_err(), "an empty bundle trusts nothing");
}

#[test]
fn server_identity_must_be_expected() {
    let ca = TestCa::new();
    let m = mesh(None, "", &[&ca.root]);
    let leaf = ca.workload("b", "server");
    let name = ServerName::try_from("10.0.0.1").unwrap();
    let check = |expected: &[&str]| {
        let v = MeshServerVerifier {
            roots: m.roots.clone(),
            trust_domain: TD.into(),
            expected: expected.iter().map(|s| s.to_string()).collect(),
        };
        v.verify_server_cert(
            &leaf.chain[0],
            &leaf.chain[1..],
            &name,
            &[],
            UnixTime::now(),
        )
    };
    assert!(check(&[SERVER_ID]).is_ok());
    assert!(check(&[CLIENT_ID, SERVER_ID]).is_ok());
    for expected in [&[CLIENT_ID][..], &[]] {
        let e = check(expected).unwrap_err();
        assert!(
            matches!(
                identity_error(&e),
                Some(PeerIdentityError::NotExpected { .. })
            ),
            "{e}"
        );
    }
    let foreign = TestCa::new().workload("b", "server");
    let v = MeshServerVerifier {
        roots: m.roots.clone(),
        trust_domain: TD.into(),
        expected: vec![SERVER_ID.to_string()].into(),
    };
    assert!(
        v.verify_server_cert(
            &foreign.chain[0],
            &foreign.chain[1..],
            &name,
            &[],
            UnixTime::now()
        )
        .is_err()
    );
}

#[test]
fn post_quantum_key_exchange_is_offered_first() {
    let p = provider();
    assert_eq!(
        p.kx_groups.first().map(|g| g.name()),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );
}

/// One handshake between `server` and a client configured with `client`; the server's and
/// the client's results.
async fn handshake(
    server: &MeshTls,
    client: Arc<ClientConfig>,
) -> (
    std::io::Result<tokio_rustls::server::TlsStream<tokio::io::DuplexStream>>,
    std::io::Result<tokio_rustls::client::TlsStream<tokio::io::DuplexStream>>,
) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server.server_config());
    let connector = TlsConnector::from(client);
    let name = ServerName::try_from("10.0.0.1").unwrap().to_owned();
    tokio::join!(acceptor.accept(a), connector.connect(name, b))
}

#[tokio::test]
async fn mesh_handshake_verifies_both_identities() {
    let ca = TestCa::new();
    let server = mesh(Some(&ca.workload("b", "server")), SERVER_ID, &[&ca.root]);
    let client = mesh(Some(&ca.workload("a", "client")), CLIENT_ID, &[&ca.root]);
    let (s, c) = handshake(&server, client.client_config(&[SERVER_ID.into()]).unwrap()).await;
    let (s, c) = (s.unwrap(), c.unwrap());
    let sc = s.get_ref().1;
    assert_eq!(handshake_peer_id(sc, TD).as_deref(), Some(CLIENT_ID));
    assert_eq!(
        handshake_peer_id(c.get_ref().1, TD).as_deref(),
        Some(SERVER_ID)
    );
    assert_eq!(sc.alpn_protocol(), Some(MESH_ALPN));
    assert_eq!(
        sc.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        sc.negotiated_key_exchange_group().map(|g| g.name()),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );

    // Secure naming: the client refuses a server that is not the expected identity.
    let (_, c) = handshake(&server, client.client_config(&[CLIENT_ID.into()]).unwrap()).await;
    let e = c.unwrap_err();
    assert_eq!(failure_reason(&e), "identity_mismatch", "{e}");

    // A client without a certificate is refused by the server.
    let anonymous = mesh(None, "", &[&ca.root]);
    let (s, _) = handshake(
        &server,
        anonymous.client_config(&[SERVER_ID.into()]).unwrap(),
    )
    .await;
    let e = s.unwrap_err();
    assert_eq!(failure_reason(&e), "no_client_certificate", "{e}");

    // A client from a foreign CA is refused by the server.
    let foreign_ca = TestCa::new();
    let foreign = mesh(
        Some(&foreign_ca.workload("a", "client")),
        CLIENT_ID,
        &[&ca.root],
    );
    let (s, _) = handshake(&server, foreign.client_config(&[SERVER_ID.into()]).unwrap()).await;
    let e = s.unwrap_err();
    assert_eq!(failure_reason(&e), "untrusted_certificate", "{e}");
}

#[test]
fn client_configs_are_cached_per_identity_set_and_bounded() {
    let ca = TestCa::new();
    let m = mesh(None, "", &[&ca.root]);
    let a = m
        .client_config(&[SERVER_ID.into(), CLIENT_ID.into()])
        .unwrap();
    let b = m
        .client_config(&[CLIENT_ID.into(), SERVER_ID.into(), CLIENT_ID.into()])
        .unwrap();
    assert!(Arc::ptr_eq(&a, &b), "order and duplicates do not matter");
    let c = m.client_config(&[SERVER_ID.into()]).unwrap();
    assert!(!Arc::ptr_eq(&a, &c));
    for i in 0..(MAX_CACHED_CLIENT_CONFIGS + 5) {
        m.client_config(&[format!("spiffe://cluster.local/ns/n/sa/s{i}")])
            .unwrap();
        assert!(m.cached_client_configs() <= MAX_CACHED_CLIENT_CONFIGS);
    }
}

#[test]
fn failure_reasons() {
    use std::io::{Error, ErrorKind};
    let wrap = |e: rustls::Error| Error::new(ErrorKind::InvalidData, e);
    let cases = [
        (Error::from(ErrorKind::TimedOut), "handshake_timeout"),
        (Error::from(ErrorKind::UnexpectedEof), "handshake_failed"),
        (
            wrap(rustls::Error::NoCertificatesPresented),
            "no_client_certificate",
        ),
        (
            wrap(rustls::Error::InvalidCertificate(CertificateError::Expired)),
            "untrusted_certificate",
        ),
        (
            wrap(PeerIdentityError::UriSanCount(2).into_rustls()),
            "bad_identity",
        ),
        (
            wrap(rustls::Error::AlertReceived(
                rustls::AlertDescription::BadCertificate,
            )),
            "refused_by_peer",
        ),
    ];
    for (e, want) in cases {
        assert_eq!(failure_reason(&e), want, "{e}");
    }
}
