//! Every refusal of [`verify_issued`], each with a chain that differs from a good one in exactly
//! the way being tested.

use std::time::{Duration, SystemTime};

use super::*;
use crate::ca::authority::{IssuancePolicy, SigningCa, generate_root};

struct Ca {
    signing: SigningCa,
    root_key: KeyPair,
    bundle: TrustBundle,
}

fn ca() -> Ca {
    let (key, cert) = generate_root(SystemTime::now()).unwrap();
    let der = pem::parse_certs(cert.as_bytes()).unwrap().remove(0);
    Ca {
        signing: SigningCa::new(&key, der.clone(), vec![]).unwrap(),
        root_key: KeyPair::from_pem(&key).unwrap(),
        bundle: TrustBundle::new(der),
    }
}

/// A chain issued by `ca` for `key` as prod/api.
fn issued(ca: &Ca, key: &KeyPair) -> Vec<String> {
    let csr = CertificateParams::default()
        .serialize_request(key)
        .unwrap()
        .pem()
        .unwrap();
    let id = Identity::new("prod", "api").unwrap();
    ca.signing
        .issue_workload(&IssuancePolicy::default(), &id, &csr, 0, SystemTime::now())
        .unwrap()
        .chain_pem
}

const ID: &str = "spiffe://cluster.local/ns/prod/sa/api";

fn exact() -> ExpectedIdentity {
    ExpectedIdentity::Exact(ID.into())
}

fn check(
    chain: &[String],
    key: &KeyPair,
    expected: &ExpectedIdentity,
    bundle: &TrustBundle,
) -> Result<String, ChainError> {
    verify_issued(
        chain,
        key.public_key_raw(),
        expected,
        bundle,
        UnixTime::now(),
    )
}

#[test]
fn a_good_chain_is_accepted_with_its_identity() {
    let (ca, key) = (ca(), KeyPair::generate().unwrap());
    let chain = issued(&ca, &key);
    assert_eq!(
        check(&chain, &key, &exact(), &ca.bundle),
        Ok(ID.to_string())
    );
    let any = ExpectedIdentity::AnyIn {
        trust_domain: "cluster.local".into(),
    };
    assert_eq!(check(&chain, &key, &any, &ca.bundle), Ok(ID.to_string()));
    let id = Identity::new("prod", "api").unwrap();
    assert_eq!(ExpectedIdentity::exact(&id, "cluster.local"), exact());
}

#[test]
fn malformed_chains_are_refused() {
    let (ca, key) = (ca(), KeyPair::generate().unwrap());
    let good = issued(&ca, &key);
    let mut two_in_one = good.clone();
    two_in_one[0] = format!("{}{}", good[0], good[1]);
    let mut junk = good.clone();
    junk[1] = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into();
    let mut no_pem = good.clone();
    no_pem[1] = "hello".into();
    let mut huge = good.clone();
    huge[1] = format!("{}{}", " ".repeat(MAX_CERT_PEM_BYTES), good[1]);
    let mut not_x509 = good.clone();
    not_x509[1] = pem::cert_to_pem(b"not a certificate");
    let mut trailing = good.clone();
    let mut der = pem::parse_certs(good[1].as_bytes())
        .unwrap()
        .remove(0)
        .to_vec();
    der.push(0);
    trailing[1] = pem::cert_to_pem(&der);
    let too_long = vec![good[0].clone(); MAX_CHAIN_LEN + 1];
    for (what, chain, want) in [
        ("empty", vec![], ChainError::Length(0)),
        ("too long", too_long, ChainError::Length(MAX_CHAIN_LEN + 1)),
        (
            "two certificates in one element",
            two_in_one,
            ChainError::NotPem(1),
        ),
        ("bad base64", junk, ChainError::NotPem(2)),
        ("no PEM at all", no_pem, ChainError::NotPem(2)),
        ("oversize element", huge, ChainError::NotPem(2)),
        (
            "PEM that is not X.509",
            not_x509,
            ChainError::Unparseable(2),
        ),
        ("trailing bytes", trailing, ChainError::Unparseable(2)),
    ] {
        assert_eq!(
            check(&chain, &key, &exact(), &ca.bundle),
            Err(want),
            "{what}"
        );
    }
}

#[test]
fn a_leaf_for_another_key_is_refused() {
    let (ca, key) = (ca(), KeyPair::generate().unwrap());
    let other = KeyPair::generate().unwrap();
    let chain = issued(&ca, &other);
    assert_eq!(
        check(&chain, &key, &exact(), &ca.bundle),
        Err(ChainError::WrongKey)
    );
}

#[test]
fn a_leaf_for_another_identity_is_refused() {
    let (ca, key) = (ca(), KeyPair::generate().unwrap());
    let chain = issued(&ca, &key);
    for expected in [
        ExpectedIdentity::Exact("spiffe://cluster.local/ns/prod/sa/other".into()),
        ExpectedIdentity::Exact("spiffe://other.td/ns/prod/sa/api".into()),
        ExpectedIdentity::AnyIn {
            trust_domain: "other.td".into(),
        },
    ] {
        assert_eq!(
            check(&chain, &key, &expected, &ca.bundle),
            Err(ChainError::WrongIdentity {
                found: vec![ID.into()],
                expected: expected.to_string(),
            })
        );
    }
    // The root itself, "issued" for the root's own key: no SPIFFE ID at all.
    let root = vec![pem::cert_to_pem(ca.signing.root())];
    assert!(matches!(
        check(&root, &ca.root_key, &exact(), &ca.bundle),
        Err(ChainError::WrongIdentity { found, .. }) if found.is_empty()
    ));
}

#[test]
fn a_chain_outside_the_bundle_or_its_lifetime_is_refused() {
    let (ca, key) = (ca(), KeyPair::generate().unwrap());
    let chain = issued(&ca, &key);
    let stranger = self::ca();
    assert!(matches!(
        check(&chain, &key, &exact(), &stranger.bundle),
        Err(ChainError::Untrusted(_))
    ));
    // A leaf signed by another CA, presented with our root appended: still untrusted.
    let mut forged = issued(&stranger, &key);
    forged[1] = pem::cert_to_pem(ca.signing.root());
    assert!(matches!(
        check(&forged, &key, &exact(), &ca.bundle),
        Err(ChainError::Untrusted(_))
    ));
    let later = SystemTime::now() + Duration::from_secs(2 * 24 * 3600);
    let later = UnixTime::since_unix_epoch(later.duration_since(SystemTime::UNIX_EPOCH).unwrap());
    assert!(matches!(
        verify_issued(&chain, key.public_key_raw(), &exact(), &ca.bundle, later),
        Err(ChainError::Untrusted(_))
    ));
}

#[test]
fn debug_does_not_show_the_key() {
    let key = KeyPair::generate().unwrap();
    let cert = WorkloadCertificate {
        key_pem: key.serialize_pem(),
        chain_pem: vec!["chain".into()],
        spiffe_id: ID.into(),
    };
    let shown = format!("{cert:?} {cert:#?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(shown.contains(ID));
}
