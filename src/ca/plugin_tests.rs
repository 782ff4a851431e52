use super::*;
use crate::ca::authority::IssuancePolicy;
use crate::ca::spiffe::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use std::time::Duration;

struct Ext {
    root_pem: String,
    inter_pem: String,
    inter_key: String,
    other_key: String,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // rcgen's default window runs to the year 4096; expiry tests need a real one.
    p.not_before = (SystemTime::now() - Duration::from_secs(3600)).into();
    p.not_after = (SystemTime::now() + Duration::from_secs(365 * 24 * 3600)).into();
    p
}

fn external(intermediate_is_ca: bool) -> Ext {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let root_params = ca_params("External Root");
    let root = root_params.self_signed(&root_key).unwrap();
    let inter_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut inter_params = ca_params("Palisade Intermediate");
    if !intermediate_is_ca {
        inter_params.is_ca = IsCa::ExplicitNoCa;
        inter_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    }
    let issuer = Issuer::from_params(&root_params, &root_key);
    let inter = inter_params.signed_by(&inter_key, &issuer).unwrap();
    Ext {
        root_pem: root.pem(),
        inter_pem: inter.pem(),
        inter_key: inter_key.serialize_pem(),
        other_key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem(),
    }
}

fn istio_files(e: &Ext) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([
        ("ca-cert.pem".into(), e.inter_pem.clone().into_bytes()),
        ("ca-key.pem".into(), e.inter_key.clone().into_bytes()),
        (
            "cert-chain.pem".into(),
            format!("{}{}", e.inter_pem, e.root_pem).into_bytes(),
        ),
        ("root-cert.pem".into(), e.root_pem.clone().into_bytes()),
    ])
}

fn err(files: &BTreeMap<String, Vec<u8>>) -> String {
    match load(files, SystemTime::now()) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn istio_layout_loads_and_issues_a_three_element_chain() {
    let e = external(true);
    let ca = load(&istio_files(&e), SystemTime::now()).unwrap();
    assert_eq!(ca.bundle.roots().len(), 1);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let issued = ca
        .signing
        .issue_workload(
            &IssuancePolicy::default(),
            &Identity::new("ns", "sa").unwrap(),
            &csr,
            0,
            SystemTime::now(),
        )
        .unwrap();
    assert_eq!(issued.chain_pem.len(), 3, "leaf, intermediate, root");
    assert_eq!(
        issued.chain_pem[1],
        pem::cert_to_pem(&pem::parse_certs(e.inter_pem.as_bytes()).unwrap()[0])
    );
    assert_eq!(issued.chain_pem[2], ca.bundle.to_pem());
}

#[test]
fn cert_manager_layout_loads() {
    let e = external(true);
    let files = BTreeMap::from([
        ("tls.crt".into(), e.inter_pem.clone().into_bytes()),
        ("tls.key".into(), e.inter_key.clone().into_bytes()),
        ("ca.crt".into(), e.root_pem.clone().into_bytes()),
    ]);
    assert!(load(&files, SystemTime::now()).is_ok());
}

#[test]
fn wrong_key_is_refused() {
    let e = external(true);
    let mut files = istio_files(&e);
    files.insert("ca-key.pem".into(), e.other_key.clone().into_bytes());
    assert!(err(&files).contains("does not match"), "{}", err(&files));
}

#[test]
fn non_ca_certificate_is_refused() {
    let files = istio_files(&external(false));
    assert!(err(&files).contains("is not a CA"), "{}", err(&files));
}

#[test]
fn unrelated_root_is_refused() {
    let e = external(true);
    let mut files = istio_files(&e);
    let other = external(true);
    files.insert("root-cert.pem".into(), other.root_pem.into_bytes());
    files.insert("cert-chain.pem".into(), e.inter_pem.clone().into_bytes());
    assert!(
        err(&files).contains("chain does not verify"),
        "{}",
        err(&files)
    );
}

#[test]
fn expired_material_is_refused() {
    let files = istio_files(&external(true));
    let later = SystemTime::now() + Duration::from_secs(20 * 365 * 24 * 3600);
    assert!(matches!(
        load(&files, later),
        Err(PluginError::NotValidNow { .. })
    ));
}

#[test]
fn missing_files_name_the_layouts() {
    let files = BTreeMap::from([("tls.crt".to_string(), b"x".to_vec())]);
    assert!(err(&files).contains("need ca-cert.pem"));
    let mut files = istio_files(&external(true));
    files.remove("root-cert.pem");
    assert!(
        err(&files).contains("root-cert.pem: missing"),
        "{}",
        err(&files)
    );
}

#[test]
fn oversize_files_are_refused() {
    let mut files = istio_files(&external(true));
    files.insert("cert-chain.pem".into(), vec![b'a'; MAX_FILE_BYTES + 1]);
    assert!(
        err(&files).contains("cert-chain.pem: larger than 1 MiB"),
        "{}",
        err(&files)
    );
}
