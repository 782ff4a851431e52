//! Issuance rules: every rejection case and the exact shape of an issued certificate.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
    PKCS_ECDSA_P521_SHA512, PKCS_ED25519, PKCS_RSA_SHA256, RsaKeySize, SignatureAlgorithm,
};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::authority::{IssuancePolicy, IssueError, MAX_CSR_BYTES, SigningCa, generate_root};
use super::{Identity, pem};

fn ca_at(now: SystemTime) -> SigningCa {
    let (key, cert) = generate_root(now).unwrap();
    let der = pem::parse_certs(cert.as_bytes()).unwrap().remove(0);
    SigningCa::new(&key, der, Vec::new()).unwrap()
}

fn csr_for(alg: &'static SignatureAlgorithm) -> String {
    let key = KeyPair::generate_for(alg).unwrap();
    csr_with(&key)
}

fn csr_with(key: &KeyPair) -> String {
    // The CSR asks for names it must not get: only the authenticated identity counts.
    let params = CertificateParams::new(vec!["evil.example.com".to_string()]).unwrap();
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn id() -> Identity {
    Identity::new("default", "web").unwrap()
}

fn issue(ca: &SigningCa, csr: &str, ttl: i64) -> Result<super::Issued, IssueError> {
    ca.issue_workload(
        &IssuancePolicy::default(),
        &id(),
        csr,
        ttl,
        SystemTime::now(),
    )
}

#[test]
fn accepted_key_types() {
    let ca = ca_at(SystemTime::now());
    for alg in [
        &PKCS_ECDSA_P256_SHA256,
        &PKCS_ECDSA_P384_SHA384,
        &PKCS_ED25519,
    ] {
        issue(&ca, &csr_for(alg), 0).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
    }
    let rsa = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap();
    issue(&ca, &csr_with(&rsa), 0).unwrap();
}

#[test]
fn unsupported_key_is_rejected() {
    let ca = ca_at(SystemTime::now());
    let err = issue(&ca, &csr_for(&PKCS_ECDSA_P521_SHA512), 0).unwrap_err();
    assert!(matches!(err, IssueError::UnsupportedKey(_)), "{err}");
    assert_eq!(err.reason(), "unsupported_key");
}

#[test]
fn malformed_csrs_are_rejected() {
    let ca = ca_at(SystemTime::now());
    for bad in [
        String::new(),
        "not a pem".to_string(),
        pem::encode("CERTIFICATE REQUEST", b"\x30\x03\x02\x01\x00"),
        pem::encode("CERTIFICATE REQUEST", b"garbage"),
        // A certificate is not a certificate request.
        pem::cert_to_pem(ca.cert_der()),
    ] {
        let err = issue(&ca, &bad, 0).unwrap_err();
        assert!(matches!(err, IssueError::MalformedCsr(_)), "{bad:?}: {err}");
        assert!(err.is_caller_error());
    }
}

#[test]
fn bad_csr_signature_is_rejected() {
    let ca = ca_at(SystemTime::now());
    let csr = csr_for(&PKCS_ECDSA_P256_SHA256);
    let mut der = rustls_pki_types::pem::PemObject::from_pem_slice(csr.as_bytes())
        .map(|d: rustls_pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
        .unwrap();
    // The signature is the tail of the DER: flip a bit inside it.
    let last = der.len() - 5;
    der[last] ^= 0x01;
    let tampered = pem::encode("CERTIFICATE REQUEST", &der);
    assert_eq!(
        issue(&ca, &tampered, 0).unwrap_err(),
        IssueError::BadCsrSignature
    );
}

#[test]
fn oversize_csr_is_rejected_before_parsing() {
    let ca = ca_at(SystemTime::now());
    let mut csr = csr_for(&PKCS_ECDSA_P256_SHA256);
    csr.push_str(&" ".repeat(MAX_CSR_BYTES));
    let err = issue(&ca, &csr, 0).unwrap_err();
    assert!(
        matches!(
            err,
            IssueError::CsrTooLarge {
                max: MAX_CSR_BYTES,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn ttl_rules() {
    let ca = ca_at(SystemTime::now());
    let csr = csr_for(&PKCS_ECDSA_P256_SHA256);
    let max = IssuancePolicy::default().max_ttl.as_secs() as i64;
    assert!(
        issue(&ca, &csr, max).is_ok(),
        "exactly the maximum is allowed"
    );
    assert_eq!(
        issue(&ca, &csr, max + 1).unwrap_err(),
        IssueError::TtlOverMax {
            requested: max as u64 + 1,
            max: max as u64
        }
    );
    assert_eq!(
        issue(&ca, &csr, -5).unwrap_err(),
        IssueError::InvalidTtl(-5)
    );
    let short = issue(&ca, &csr, 3600).unwrap();
    let left = short.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(left <= Duration::from_secs(3600) && left > Duration::from_secs(3590));
}

#[test]
fn not_after_is_clamped_to_the_issuer() {
    // A root made ten years ago has days left: a 90-day request ends with the root.
    let ca = ca_at(SystemTime::now() - Duration::from_secs(3652 * 24 * 3600 - 86400));
    let csr = csr_for(&PKCS_ECDSA_P256_SHA256);
    let issued = issue(&ca, &csr, 90 * 24 * 3600).unwrap();
    assert_eq!(issued.not_after, ca.not_after());
}

#[test]
fn expired_issuer_refuses() {
    let ca = ca_at(SystemTime::now() - Duration::from_secs(3653 * 24 * 3600));
    let err = issue(&ca, &csr_for(&PKCS_ECDSA_P256_SHA256), 0).unwrap_err();
    assert_eq!(err, IssueError::IssuerExpired);
    assert!(!err.is_caller_error());
}

#[test]
fn certificate_shape() {
    let now = SystemTime::now();
    let ca = ca_at(now);
    let issued = ca
        .issue_workload(
            &IssuancePolicy::default(),
            &id(),
            &csr_for(&PKCS_ECDSA_P256_SHA256),
            0,
            now,
        )
        .unwrap();
    assert_eq!(issued.chain_pem.len(), 2, "leaf then root");
    assert_eq!(issued.chain_pem[1], pem::cert_to_pem(ca.cert_der()));
    let der = pem::parse_certs(issued.chain_pem[0].as_bytes())
        .unwrap()
        .remove(0);
    let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();

    assert_eq!(cert.subject().iter().count(), 0, "empty subject");
    let (_, root) = X509Certificate::from_der(ca.cert_der().as_ref()).unwrap();
    assert_eq!(cert.issuer().as_raw(), root.subject().as_raw());

    let now_s = super::authority::unix_secs(now);
    assert_eq!(cert.validity().not_before.timestamp(), now_s - 120);
    assert_eq!(cert.validity().not_after.timestamp(), now_s + 24 * 3600);

    let serial = cert.raw_serial();
    assert!(serial.len() >= 16, "serial of {} octets", serial.len());
    assert_eq!(
        super::authority::unix_secs(issued.not_after),
        now_s + 24 * 3600
    );
    assert_eq!(issued.serial_hex.len(), serial.len() * 2);

    let mut seen = 0;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                seen += 1;
                assert!(ext.critical, "SAN must be critical with an empty subject");
                let names: Vec<_> = san.general_names.iter().collect();
                assert_eq!(
                    names,
                    vec![&GeneralName::URI(
                        "spiffe://cluster.local/ns/default/sa/web"
                    )]
                );
            }
            ParsedExtension::KeyUsage(ku) => {
                seen += 1;
                assert!(ku.digital_signature() && ku.key_encipherment());
                assert!(!ku.key_cert_sign() && !ku.crl_sign());
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                seen += 1;
                assert!(eku.server_auth && eku.client_auth);
                assert!(!eku.any && !eku.code_signing && eku.other.is_empty());
            }
            ParsedExtension::BasicConstraints(bc) => {
                seen += 1;
                assert!(!bc.ca);
            }
            _ => {}
        }
    }
    assert_eq!(seen, 4, "SAN, KU, EKU and basicConstraints present");

    // Signed by the root's key.
    super::keys::verify_signature(
        root.public_key(),
        &cert.signature_algorithm,
        cert.tbs_certificate.as_ref(),
        &cert.signature_value.data,
    )
    .unwrap();
}

#[test]
fn serials_differ() {
    let ca = ca_at(SystemTime::now());
    let csr = csr_for(&PKCS_ECDSA_P256_SHA256);
    let a = issue(&ca, &csr, 0).unwrap();
    let b = issue(&ca, &csr, 0).unwrap();
    assert_ne!(a.serial_hex, b.serial_hex);
}

/// openssl as an independent reader: it must verify the chain for both TLS purposes and show
/// the same shape.
#[test]
fn openssl_verifies_and_reads_the_certificate() {
    let openssl = std::path::Path::new("/usr/bin/openssl");
    assert!(
        openssl.exists(),
        "openssl is required for this test (apt-get install openssl)"
    );
    let ca = ca_at(SystemTime::now());
    let issued = issue(&ca, &csr_for(&PKCS_ECDSA_P256_SHA256), 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.pem");
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&root, &issued.chain_pem[1]).unwrap();
    std::fs::write(&leaf, &issued.chain_pem[0]).unwrap();
    for purpose in ["sslclient", "sslserver"] {
        let out = std::process::Command::new(openssl)
            .args(["verify", "-purpose", purpose, "-CAfile"])
            .arg(&root)
            .arg(&leaf)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(": OK"),
            "{purpose}: {stdout} {out:?}"
        );
    }
    let out = std::process::Command::new(openssl)
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&leaf)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "X509v3 Subject Alternative Name: critical",
        "URI:spiffe://cluster.local/ns/default/sa/web",
        "Digital Signature, Key Encipherment",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "CA:FALSE",
        "Subject: \n",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
    assert!(!text.contains("evil.example.com"));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever arrives as a CSR, issuance answers with a caller error and never panics.
        #[test]
        fn arbitrary_csr_text_is_refused(text in ".{0,2000}") {
            let ca = ca_at(SystemTime::now());
            let err = issue(&ca, &text, 0).unwrap_err();
            prop_assert!(err.is_caller_error());
        }

        /// Garbage wrapped in a CSR PEM envelope too.
        #[test]
        fn arbitrary_csr_der_is_refused(der in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let ca = ca_at(SystemTime::now());
            let err = issue(&ca, &pem::encode("CERTIFICATE REQUEST", &der), 0).unwrap_err();
            prop_assert!(err.is_caller_error());
        }

        /// The certificate names exactly the authenticated identity, whatever the CSR asked for.
        #[test]
        fn san_is_always_the_identity(
            names in proptest::collection::vec("[a-z]{1,10}\\.[a-z]{2,5}", 0..4),
            ns in "[a-z][a-z0-9-]{0,20}[a-z0-9]",
            sa in "[a-z][a-z0-9-]{0,20}[a-z0-9]",
        ) {
            let ca = ca_at(SystemTime::now());
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, "admin");
            let csr = params.serialize_request(&key).unwrap().pem().unwrap();
            let id = Identity::new(&ns, &sa).unwrap();
            let issued = ca
                .issue_workload(&IssuancePolicy::default(), &id, &csr, 0, SystemTime::now())
                .unwrap();
            let der = pem::parse_certs(issued.chain_pem[0].as_bytes()).unwrap().remove(0);
            let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
            prop_assert_eq!(cert.subject().iter().count(), 0);
            let san = cert.subject_alternative_name().unwrap().unwrap();
            let want = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
            prop_assert_eq!(san.value.general_names.clone(), vec![GeneralName::URI(&want)]);
        }
    }
}
