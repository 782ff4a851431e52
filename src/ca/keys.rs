//! Public-key classification and signature verification over x509-parser structures, done with
//! aws-lc-rs (the one crypto provider of the graph: x509-parser's own `verify` pulls in ring).

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519, Oid,
};
use x509_parser::prelude::{AlgorithmIdentifier, SubjectPublicKeyInfo};

/// The key types a workload may hold (semantics.md: everything else is rejected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    EcdsaP384,
    Rsa { bits: usize },
    Ed25519,
}

/// Why a key or signature was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("unsupported key type: {0}")]
    UnsupportedKey(String),
    #[error("unsupported signature algorithm {0}")]
    UnsupportedSignatureAlgorithm(String),
    #[error("signature does not verify")]
    BadSignature,
}

/// Classifies a public key, rejecting everything but P-256, P-384, RSA 2048..=4096 and Ed25519.
pub fn classify(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyType, KeyError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => Ok(KeyType::EcdsaP256),
            Some(c) if c == OID_NIST_EC_P384 => Ok(KeyType::EcdsaP384),
            other => Err(KeyError::UnsupportedKey(format!(
                "EC curve {:?}",
                other.map(|c| c.to_id_string()).unwrap_or_default()
            ))),
        }
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => modulus_bits(rsa.modulus),
            _ => return Err(KeyError::UnsupportedKey("malformed RSA key".into())),
        };
        if (2048..=4096).contains(&bits) {
            Ok(KeyType::Rsa { bits })
        } else {
            Err(KeyError::UnsupportedKey(format!(
                "RSA {bits} bits (2048..=4096 accepted)"
            )))
        }
    } else if *alg == OID_SIG_ED25519 {
        Ok(KeyType::Ed25519)
    } else {
        Err(KeyError::UnsupportedKey(format!(
            "algorithm {}",
            alg.to_id_string()
        )))
    }
}

/// Bit length of a big-endian unsigned integer (x509-parser's own count is off for some forms).
fn modulus_bits(modulus: &[u8]) -> usize {
    let mut significant = modulus.iter().skip_while(|&&b| b == 0);
    match significant.next() {
        Some(first) => (significant.count() + 1) * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// Verifies `signature` over `message` with the key in `spki`, for the algorithm `sig_alg`.
/// The key/algorithm pair must be one of the accepted combinations.
pub fn verify_signature(
    spki: &SubjectPublicKeyInfo<'_>,
    sig_alg: &AlgorithmIdentifier<'_>,
    message: &[u8],
    signature: &[u8],
) -> Result<(), KeyError> {
    let key_type = classify(spki)?;
    let sig = &sig_alg.algorithm;
    let is = |oid: &Oid<'_>| sig == oid;
    let alg: &'static dyn VerificationAlgorithm = match key_type {
        KeyType::EcdsaP256 if is(&OID_SIG_ECDSA_WITH_SHA256) => &signature::ECDSA_P256_SHA256_ASN1,
        KeyType::EcdsaP256 if is(&OID_SIG_ECDSA_WITH_SHA384) => &signature::ECDSA_P256_SHA384_ASN1,
        KeyType::EcdsaP384 if is(&OID_SIG_ECDSA_WITH_SHA384) => &signature::ECDSA_P384_SHA384_ASN1,
        KeyType::EcdsaP384 if is(&OID_SIG_ECDSA_WITH_SHA256) => &signature::ECDSA_P384_SHA256_ASN1,
        KeyType::Rsa { .. } if is(&OID_PKCS1_SHA256WITHRSA) => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        KeyType::Rsa { .. } if is(&OID_PKCS1_SHA384WITHRSA) => {
            &signature::RSA_PKCS1_2048_8192_SHA384
        }
        KeyType::Rsa { .. } if is(&OID_PKCS1_SHA512WITHRSA) => {
            &signature::RSA_PKCS1_2048_8192_SHA512
        }
        KeyType::Ed25519 if is(&OID_SIG_ED25519) => &signature::ED25519,
        _ => {
            return Err(KeyError::UnsupportedSignatureAlgorithm(sig.to_id_string()));
        }
    };
    UnparsedPublicKey::new(alg, &spki.subject_public_key.data)
        .verify(message, signature)
        .map_err(|_| KeyError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_bit_count() {
        assert_eq!(modulus_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(modulus_bits(&[0x01, 0x00]), 9);
        assert_eq!(modulus_bits(&[0x00]), 0);
        assert_eq!(modulus_bits(&[]), 0);
    }

    /// Every accepted key type, read from a real certificate: classified as itself, and its
    /// signature verified with the algorithm its OID names; a signature OID that does not fit
    /// the key is refused by name.
    #[test]
    fn key_types_and_signature_oids() {
        use x509_parser::prelude::{FromDer as _, X509Certificate};
        let algs: [(&rcgen::SignatureAlgorithm, KeyType); 4] = [
            (&rcgen::PKCS_ECDSA_P256_SHA256, KeyType::EcdsaP256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, KeyType::EcdsaP384),
            (&rcgen::PKCS_ED25519, KeyType::Ed25519),
            (&rcgen::PKCS_RSA_SHA256, KeyType::Rsa { bits: 2048 }),
        ];
        let ders: Vec<Vec<u8>> = algs
            .iter()
            .map(|(alg, _)| {
                let key = rcgen::KeyPair::generate_for(alg).expect("key");
                let params = rcgen::CertificateParams::new(vec!["k.test".into()]).expect("params");
                params.self_signed(&key).expect("cert").der().to_vec()
            })
            .collect();
        let certs: Vec<X509Certificate<'_>> = ders
            .iter()
            .map(|d| X509Certificate::from_der(d).expect("parses").1)
            .collect();
        for (cert, (_, want)) in certs.iter().zip(algs) {
            let spki = &cert.tbs_certificate.subject_pki;
            assert_eq!(classify(spki), Ok(want));
            let signed = cert.tbs_certificate.as_ref();
            let sig = &cert.signature_value.data;
            assert_eq!(
                verify_signature(spki, &cert.signature_algorithm, signed, sig),
                Ok(()),
                "{want:?}"
            );
            assert_eq!(
                verify_signature(spki, &cert.signature_algorithm, b"other", sig),
                Err(KeyError::BadSignature),
                "{want:?}"
            );
        }
        // An Ed25519 key under ecdsa-with-SHA256: refused, naming the OID.
        let (ed, p256) = (&certs[2], &certs[0]);
        assert_eq!(
            verify_signature(
                &ed.tbs_certificate.subject_pki,
                &p256.signature_algorithm,
                b"m",
                b"s"
            ),
            Err(KeyError::UnsupportedSignatureAlgorithm(
                "1.2.840.10045.4.3.2".into()
            ))
        );
    }
}
