//! Public-key classification and signature verification over x509-parser structures, done with
//! aws-lc-rs (the one crypto provider of the graph: x509-parser's own `verify` pulls in ring).

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::prelude::{AlgorithmIdentifier, SubjectPublicKeyInfo};

const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const CURVE_P256: &str = "1.2.840.10045.3.1.7";
const CURVE_P384: &str = "1.3.132.0.34";
const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const ED25519: &str = "1.3.101.112";
const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
const RSA_SHA256: &str = "1.2.840.113549.1.1.11";
const RSA_SHA384: &str = "1.2.840.113549.1.1.12";
const RSA_SHA512: &str = "1.2.840.113549.1.1.13";

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
    let alg = spki.algorithm.algorithm.to_id_string();
    match alg.as_str() {
        EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            match curve.as_str() {
                CURVE_P256 => Ok(KeyType::EcdsaP256),
                CURVE_P384 => Ok(KeyType::EcdsaP384),
                other => Err(KeyError::UnsupportedKey(format!("EC curve {other:?}"))),
            }
        }
        RSA_ENCRYPTION => {
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
        }
        ED25519 => Ok(KeyType::Ed25519),
        other => Err(KeyError::UnsupportedKey(format!("algorithm {other}"))),
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
    let sig_oid = sig_alg.algorithm.to_id_string();
    let alg: &'static dyn VerificationAlgorithm = match (key_type, sig_oid.as_str()) {
        (KeyType::EcdsaP256, ECDSA_SHA256) => &signature::ECDSA_P256_SHA256_ASN1,
        (KeyType::EcdsaP256, ECDSA_SHA384) => &signature::ECDSA_P256_SHA384_ASN1,
        (KeyType::EcdsaP384, ECDSA_SHA384) => &signature::ECDSA_P384_SHA384_ASN1,
        (KeyType::EcdsaP384, ECDSA_SHA256) => &signature::ECDSA_P384_SHA256_ASN1,
        (KeyType::Rsa { .. }, RSA_SHA256) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (KeyType::Rsa { .. }, RSA_SHA384) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (KeyType::Rsa { .. }, RSA_SHA512) => &signature::RSA_PKCS1_2048_8192_SHA512,
        (KeyType::Ed25519, ED25519) => &signature::ED25519,
        (_, other) => return Err(KeyError::UnsupportedSignatureAlgorithm(other.to_string())),
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
}
