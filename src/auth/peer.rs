//! Renewal by client certificate: a caller presenting a still-valid workload certificate of
//! this mesh over mTLS is that identity — when renewal is enabled at all (it is opt-in: tokens
//! are the credential), when the certificate was issued by this CA's own signing certificate
//! (not merely by something under the same root), and, in a cluster, while its ServiceAccount
//! still exists.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{AuthError, Identity};
use crate::ca::authority::unix_secs;

/// A ServiceAccount lookup that takes longer fails (Unavailable), well inside the gRPC deadline.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks that the leaf of `chain` was issued by `signing_cert` itself (the CA signing now),
/// is within its validity and carries the clientAuth usage. Intermediates the caller sent are
/// ignored: our workload certificates are always signed directly by the signing certificate,
/// so a leaf from a sibling intermediate under the same root (a plug-in CA's neighbour) fails
/// here even though it verifies against the trust bundle.
pub fn issued_by(
    chain: &[CertificateDer<'_>],
    signing_cert: &CertificateDer<'static>,
    now: SystemTime,
) -> Result<(), AuthError> {
    let bad = |m: String| AuthError::Unauthenticated(format!("client certificate: {m}"));
    let leaf = chain.first().ok_or_else(|| bad("none presented".into()))?;
    let mut anchor = rustls::RootCertStore::empty();
    anchor
        .add(signing_cert.clone())
        .map_err(|e| bad(format!("signing certificate unusable as an anchor: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(anchor), provider)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let now = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    verifier
        .verify_client_cert(&leaf.clone().into_owned(), &[], now)
        .map_err(|e| bad(format!("not issued by this CA's signing certificate: {e}")))?;
    Ok(())
}

/// Whether a ServiceAccount still exists (renewal by certificate must stop when it is deleted).
#[async_trait::async_trait]
pub trait ServiceAccounts: Send + Sync {
    /// `Ok(true)` when `identity`'s ServiceAccount exists, `Ok(false)` when it does not,
    /// `Err(Unavailable)` when that cannot be told.
    async fn exists(&self, identity: &Identity) -> Result<bool, AuthError>;
}

/// ServiceAccounts read from the API server (needs `get` on serviceaccounts).
pub struct KubeServiceAccounts {
    client: kube::Client,
}

impl KubeServiceAccounts {
    /// Looks ServiceAccounts up through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

#[async_trait::async_trait]
impl ServiceAccounts for KubeServiceAccounts {
    async fn exists(&self, identity: &Identity) -> Result<bool, AuthError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), identity.namespace());
        let unavailable =
            |m: String| AuthError::Unavailable(format!("ServiceAccount {identity}: {m}"));
        match tokio::time::timeout(
            LOOKUP_TIMEOUT,
            api.get_metadata_opt(identity.service_account()),
        )
        .await
        {
            Ok(Ok(found)) => Ok(found.is_some()),
            Ok(Err(e)) => Err(unavailable(e.to_string())),
            Err(_) => Err(unavailable("lookup timed out".into())),
        }
    }
}

/// The identity in a peer's leaf certificate.
///
/// The chain MUST already have been verified against the trust bundle by the TLS layer (the
/// gRPC server's client verifier does it, including the clientAuth EKU); this reads the SPIFFE
/// ID and re-checks the validity window and trust domain.
pub fn identity_from_peer_cert(
    chain: &[CertificateDer<'_>],
    trust_domain: &str,
    now: SystemTime,
) -> Result<Identity, AuthError> {
    let bad = |m: &str| AuthError::Unauthenticated(format!("client certificate: {m}"));
    let leaf = chain.first().ok_or_else(|| bad("none presented"))?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|_| bad("unparseable"))?;
    let now = unix_secs(now);
    if now < cert.validity().not_before.timestamp() || now >= cert.validity().not_after.timestamp()
    {
        return Err(bad("outside its validity window"));
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|_| bad("malformed SAN"))?
        .ok_or_else(|| bad("no SAN"))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => Identity::from_spiffe_id(one, trust_domain).map_err(|e| bad(&e.to_string())),
        _ => Err(bad("not exactly one URI SAN")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::authority::{IssuancePolicy, SigningCa, generate_root};
    use crate::ca::pem;
    use rcgen::{CertificateParams, KeyPair};

    fn issued_leaf(ttl: i64) -> CertificateDer<'static> {
        let (key, cert) = generate_root(SystemTime::now()).unwrap();
        let der = pem::parse_certs(cert.as_bytes()).unwrap().remove(0);
        let ca = SigningCa::new(&key, der, vec![]).unwrap();
        let k = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&k)
            .unwrap()
            .pem()
            .unwrap();
        let id = Identity::new("prod", "api").unwrap();
        let issued = ca
            .issue_workload(
                &IssuancePolicy::default(),
                &id,
                &csr,
                ttl,
                SystemTime::now(),
            )
            .unwrap();
        pem::parse_certs(issued.chain_pem[0].as_bytes())
            .unwrap()
            .remove(0)
    }

    #[test]
    fn workload_certificate_is_its_identity() {
        let leaf = issued_leaf(0);
        let id = identity_from_peer_cert(
            std::slice::from_ref(&leaf),
            "cluster.local",
            SystemTime::now(),
        );
        assert_eq!(id.unwrap(), Identity::new("prod", "api").unwrap());
        assert!(
            identity_from_peer_cert(std::slice::from_ref(&leaf), "other.td", SystemTime::now())
                .is_err()
        );
        let later = SystemTime::now() + std::time::Duration::from_secs(2 * 86400);
        assert!(identity_from_peer_cert(&[leaf], "cluster.local", later).is_err());
        assert!(identity_from_peer_cert(&[], "cluster.local", SystemTime::now()).is_err());
    }

    #[test]
    fn certificates_without_a_spiffe_id_are_refused() {
        let (_, cert) = generate_root(SystemTime::now()).unwrap();
        let der = pem::parse_certs(cert.as_bytes()).unwrap().remove(0);
        assert!(identity_from_peer_cert(&[der], "cluster.local", SystemTime::now()).is_err());
    }
}
