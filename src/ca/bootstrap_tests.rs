//! Self-signed root lifecycle through a real (directory) store: create once, reuse, re-issue
//! with the same key at 80% of life.

use std::time::{Duration, SystemTime};

use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn spki(der: &[u8]) -> Vec<u8> {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.public_key().raw.to_vec()
}

#[tokio::test]
async fn created_once_then_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path());
    let now = SystemTime::now();
    let first = bootstrap_self_signed(&store, now).await.unwrap();
    let second = bootstrap_self_signed(&store, now + Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(first.cert_der(), second.cert_der());
    let life = first
        .not_after()
        .duration_since(first.not_before())
        .unwrap();
    assert!(
        life >= 10 * YEAR - Duration::from_secs(3600),
        "ten-year root"
    );
}

#[tokio::test]
async fn reissued_with_the_same_key_at_eighty_percent() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path());
    let created_at = SystemTime::now() - 9 * YEAR;
    let old = bootstrap_self_signed(&store, created_at).await.unwrap();
    // 7.9 years in: not yet.
    let early = bootstrap_self_signed(&store, created_at + 7 * YEAR + YEAR * 9 / 10).await;
    assert_eq!(early.unwrap().cert_der(), old.cert_der());
    // 9 years in (90% > 80%): re-issued, same key, persisted.
    let now = SystemTime::now();
    let new = bootstrap_self_signed(&store, now).await.unwrap();
    assert_ne!(new.cert_der(), old.cert_der());
    assert_eq!(spki(new.cert_der()), spki(old.cert_der()), "same key");
    assert!(new.not_after() > now + 9 * YEAR);
    let stored = store.load().await.unwrap().unwrap();
    assert_eq!(
        pem::parse_certs(stored.cert_pem.as_bytes()).unwrap()[0],
        *new.cert_der()
    );

    // A workload certificate from the old root verifies against the new one (same subject
    // and key), so rotation by re-issue breaks nothing.
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let id = Identity::new("a", "b").unwrap();
    let leaf = old
        .issue_workload(&IssuancePolicy::default(), &id, &csr, 3600, now)
        .unwrap();
    let leaf = pem::parse_certs(leaf.chain_pem[0].as_bytes())
        .unwrap()
        .remove(0);
    let (_, leaf) = X509Certificate::from_der(leaf.as_ref()).unwrap();
    let (_, new_root) = X509Certificate::from_der(new.cert_der().as_ref()).unwrap();
    assert_eq!(leaf.issuer().as_raw(), new_root.subject().as_raw());
    keys::verify_signature(
        new_root.public_key(),
        &leaf.signature_algorithm,
        leaf.tbs_certificate.as_ref(),
        &leaf.signature_value.data,
    )
    .unwrap();
}

#[test]
fn authority_adds_a_renewed_root_to_the_bundle() {
    let now = SystemTime::now();
    let make = |t| {
        let (key, cert) = authority::generate_root(t).unwrap();
        SigningCa::new(
            &key,
            pem::parse_certs(cert.as_bytes()).unwrap().remove(0),
            vec![],
        )
        .unwrap()
    };
    let first = make(now);
    let bundle = TrustBundle::new(first.root().clone());
    let metrics = crate::metrics::CaMetrics::default();
    let authority = Authority::new(first, bundle, IssuancePolicy::default(), metrics.clone());
    let changes = authority.subscribe_bundle();
    let second = make(now);
    let second_root = second.root().clone();
    authority.set_signing(second).unwrap();
    assert!(changes.has_changed().unwrap());
    assert_eq!(authority.trust_bundle().roots().len(), 2);
    assert_eq!(authority.signing().root(), &second_root);
}

/// A root that cannot be distributed must not start signing: the error surfaces and the old
/// CA keeps signing (was: the insert error became `false` and the signer switched anyway).
#[test]
fn a_root_that_cannot_join_the_bundle_does_not_start_signing() {
    let now = SystemTime::now();
    let make = |t| {
        let (key, cert) = authority::generate_root(t).unwrap();
        SigningCa::new(
            &key,
            pem::parse_certs(cert.as_bytes()).unwrap().remove(0),
            vec![],
        )
        .unwrap()
    };
    let first = make(now);
    let first_root = first.root().clone();
    let mut bundle = TrustBundle::new(first_root.clone());
    for i in 1..crate::ca::bundle::MAX_ROOTS {
        bundle.add(vec![i as u8].into()).unwrap();
    }
    let authority = Authority::new(
        first,
        bundle.clone(),
        IssuancePolicy::default(),
        crate::metrics::CaMetrics::default(),
    );
    let changes = authority.subscribe_bundle();
    assert_eq!(
        authority.set_signing(make(now)),
        Err(crate::ca::bundle::BundleError::TooMany)
    );
    assert!(!changes.has_changed().unwrap());
    assert_eq!(authority.trust_bundle(), bundle);
    assert_eq!(authority.signing().root(), &first_root);
}

#[test]
fn debug_of_ca_material_never_shows_a_private_key() {
    let (key, cert) = authority::generate_root(SystemTime::now()).unwrap();
    let signing = SigningCa::new(
        &key,
        pem::parse_certs(cert.as_bytes()).unwrap().remove(0),
        vec![],
    )
    .unwrap();
    let stored = StoredCa {
        key_pem: key.clone(),
        cert_pem: cert,
        version: None,
    };
    let workload = crate::ca::client::WorkloadCertificate {
        key_pem: key,
        chain_pem: vec![],
        spiffe_id: "spiffe://cluster.local/ns/a/sa/b".into(),
    };
    for shown in [
        format!("{signing:?} {signing:#?}"),
        format!("{stored:?} {stored:#?}"),
        format!("{workload:?} {workload:#?}"),
    ] {
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }
}

#[tokio::test]
async fn renewal_restores_a_deleted_store_instead_of_making_a_new_root() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path());
    let ca = bootstrap_self_signed(&store, SystemTime::now())
        .await
        .unwrap();
    let root = ca.cert_der().clone();
    let authority = Authority::new(
        ca,
        TrustBundle::new(root.clone()),
        IssuancePolicy::default(),
        crate::metrics::CaMetrics::default(),
    );
    std::fs::remove_dir_all(dir.path().join("ca")).unwrap();
    renew_once(&authority, &store).await.unwrap();
    let stored = store.load().await.unwrap().expect("written back");
    assert_eq!(
        pem::parse_certs(stored.cert_pem.as_bytes()).unwrap()[0],
        root
    );
    assert_eq!(authority.signing().cert_der(), &root);
}
