//! A client-certificate verifier that follows the trust bundle: each handshake verifies against
//! the bundle current at that moment, so a root added (or removed) while the control plane runs
//! takes effect without a restart.
//!
//! The webpki verifier for a bundle is built once and reused until the bundle changes (a
//! comparison of at most [`crate::ca::bundle::MAX_ROOTS`] certificates per handshake).

use std::sync::{Arc, RwLock};

use rustls::DistinguishedName;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio::sync::watch;

use crate::ca::TrustBundle;

/// Verifies client certificates against the current trust bundle. Clients without a
/// certificate are still accepted (they authenticate with a bearer token instead).
#[derive(Debug)]
pub struct LiveClientVerifier {
    bundle: watch::Receiver<TrustBundle>,
    provider: Arc<CryptoProvider>,
    cache: RwLock<Option<Cached>>,
}

#[derive(Debug)]
struct Cached {
    bundle: TrustBundle,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl LiveClientVerifier {
    /// Follows `bundle`, verifying with `provider`'s algorithms.
    pub fn new(bundle: watch::Receiver<TrustBundle>, provider: Arc<CryptoProvider>) -> Self {
        Self {
            bundle,
            provider,
            cache: RwLock::new(None),
        }
    }

    /// The webpki verifier for the bundle as it is now.
    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        {
            let bundle = self.bundle.borrow();
            // A poisoned lock only loses the cache: rebuild.
            if let Ok(cache) = self.cache.read()
                && let Some(cached) = cache.as_ref()
                && cached.bundle == *bundle
            {
                return Ok(cached.verifier.clone());
            }
        }
        let bundle = self.bundle.borrow().clone();
        let verifier: Arc<dyn ClientCertVerifier> = WebPkiClientVerifier::builder_with_provider(
            Arc::new(bundle.root_store()),
            self.provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| {
            tracing::error!(error = %e, "the trust bundle cannot verify client certificates");
            rustls::Error::General("no usable trust anchors".into())
        })?;
        tracing::info!(
            roots = bundle.roots().len(),
            "client-certificate verifier follows a new trust bundle"
        );
        if let Ok(mut cache) = self.cache.write() {
            *cache = Some(Cached {
                bundle,
                verifier: verifier.clone(),
            });
        }
        Ok(verifier)
    }
}

impl ClientCertVerifier for LiveClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: the set changes with the bundle and a reference cannot outlive a handshake's
    /// view of it; clients send their workload certificate without them.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    crate::net::tls::handshake_signatures!(provider);
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::ca::authority::generate_root;
    use crate::ca::spiffe::Identity;
    use crate::ca::{IssuancePolicy, SigningCa, pem};

    /// A fresh CA and a workload certificate chain (leaf, root) it issued.
    fn ca_and_leaf() -> (CertificateDer<'static>, Vec<CertificateDer<'static>>) {
        let (key, cert) = generate_root(SystemTime::now()).unwrap();
        let root = pem::parse_certs(cert.as_bytes()).unwrap().remove(0);
        let ca = SigningCa::new(&key, root.clone(), vec![]).unwrap();
        let k = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&k)
            .unwrap()
            .pem()
            .unwrap();
        let id = Identity::new("shop", "web").unwrap();
        let issued = ca
            .issue_workload(&IssuancePolicy::default(), &id, &csr, 0, SystemTime::now())
            .unwrap();
        let chain = issued
            .chain_pem
            .iter()
            .map(|p| pem::parse_certs(p.as_bytes()).unwrap().remove(0))
            .collect();
        (root, chain)
    }

    #[test]
    fn follows_the_bundle() {
        let (old_root, old_chain) = ca_and_leaf();
        let (new_root, new_chain) = ca_and_leaf();
        let (tx, rx) = watch::channel(TrustBundle::new(old_root.clone()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = LiveClientVerifier::new(rx, provider);
        let verify = |chain: &[CertificateDer<'static>]| {
            verifier
                .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
                .is_ok()
        };
        assert!(verify(&old_chain));
        assert!(!verify(&new_chain), "a root not in the bundle");
        tx.send_modify(|b| {
            b.add(new_root.clone()).unwrap();
        });
        assert!(verify(&new_chain), "trusted once its root joins");
        assert!(verify(&old_chain));
        tx.send_modify(|b| {
            b.remove(&old_root);
        });
        assert!(!verify(&old_chain), "untrusted once its root leaves");
        assert!(verify(&new_chain));
        tx.send_replace(TrustBundle::default());
        assert!(!verify(&new_chain), "an empty bundle trusts nothing");
        assert!(!verifier.client_auth_mandatory());
        assert!(verifier.root_hint_subjects().is_empty());
    }
}
