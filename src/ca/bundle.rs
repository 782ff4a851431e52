//! The trust bundle: every root a workload should trust, not just one, so a new root can be
//! trusted before it signs anything and an old one kept until nothing it signed is left.

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::pem;

/// Most roots a bundle may hold; real rotations need two or three.
pub const MAX_ROOTS: usize = 16;

/// Why a bundle could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("trust bundle: {0}")]
    Pem(String),
    #[error("trust bundle holds no certificate")]
    Empty,
    #[error("trust bundle holds more than {MAX_ROOTS} roots")]
    TooMany,
    #[error("trust bundle entry {0} is not a parseable X.509 certificate")]
    NotCertificate(usize),
}

/// An ordered, duplicate-free list of root certificates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// A bundle of one root.
    pub fn new(root: CertificateDer<'static>) -> Self {
        Self { roots: vec![root] }
    }

    /// Adds a root unless present; returns whether it was added.
    pub fn add(&mut self, root: CertificateDer<'static>) -> Result<bool, BundleError> {
        if self.roots.contains(&root) {
            return Ok(false);
        }
        if self.roots.len() >= MAX_ROOTS {
            return Err(BundleError::TooMany);
        }
        self.roots.push(root);
        Ok(true)
    }

    /// Removes a root (the end of a rotation); returns whether it was present.
    pub fn remove(&mut self, root: &CertificateDer<'_>) -> bool {
        let before = self.roots.len();
        self.roots.retain(|r| r.as_ref() != root.as_ref());
        before != self.roots.len()
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The bundle as concatenated PEM (the `root-cert.pem` format).
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|r| pem::cert_to_pem(r)).collect()
    }

    /// Parses concatenated PEM; every entry must be a certificate.
    pub fn from_pem(text: &[u8]) -> Result<Self, BundleError> {
        let certs = pem::parse_certs(text).map_err(BundleError::Pem)?;
        if certs.is_empty() {
            return Err(BundleError::Empty);
        }
        let mut bundle = Self::default();
        for (i, cert) in certs.into_iter().enumerate() {
            if X509Certificate::from_der(cert.as_ref()).is_err() {
                return Err(BundleError::NotCertificate(i + 1));
            }
            bundle.add(cert)?;
        }
        Ok(bundle)
    }

    /// The roots as a rustls store (for verifying client certificates).
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut store = rustls::RootCertStore::empty();
        // Entries were parsed on the way in; one rustls rejects is left out rather than
        // failing the whole bundle.
        let _ = store.add_parsable_certificates(self.roots.iter().cloned());
        store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn root() -> CertificateDer<'static> {
        let (_, cert_pem) = crate::ca::authority::generate_root(SystemTime::now()).unwrap();
        pem::parse_certs(cert_pem.as_bytes()).unwrap().remove(0)
    }

    #[test]
    fn several_roots_round_trip_through_pem() {
        let (a, b) = (root(), root());
        let mut bundle = TrustBundle::new(a.clone());
        assert!(bundle.add(b.clone()).unwrap());
        assert!(!bundle.add(a.clone()).unwrap(), "duplicates are not added");
        let text = bundle.to_pem();
        assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 2);
        let back = TrustBundle::from_pem(text.as_bytes()).unwrap();
        assert_eq!(back, bundle);
        assert_eq!(back.root_store().len(), 2);
        assert!(bundle.remove(&a));
        assert_eq!(bundle.roots(), &[b]);
    }

    #[test]
    fn bad_bundles_are_rejected() {
        assert_eq!(TrustBundle::from_pem(b""), Err(BundleError::Empty));
        let junk = pem::cert_to_pem(b"not a certificate");
        assert_eq!(
            TrustBundle::from_pem(junk.as_bytes()),
            Err(BundleError::NotCertificate(1))
        );
        let mut bundle = TrustBundle::default();
        for i in 0..MAX_ROOTS {
            bundle.add(CertificateDer::from(vec![i as u8])).unwrap();
        }
        assert_eq!(
            bundle.add(CertificateDer::from(vec![0xff])),
            Err(BundleError::TooMany)
        );
    }
}
