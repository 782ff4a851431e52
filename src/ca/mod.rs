//! The embedded certificate authority: root and plug-in CA material, key stores, the trust
//! bundle, workload issuance (semantics.md "Certificate authority") and the control plane's
//! own serving certificate.

pub mod authority;
pub mod bundle;
pub mod client;
pub mod keys;
pub mod kube_store;
pub mod pem;
pub mod plugin;
pub mod serving;
pub mod spiffe;
pub mod store;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

pub use authority::{CaError, IssuancePolicy, IssueError, Issued, SigningCa};
pub use bundle::TrustBundle;
pub use spiffe::Identity;
pub use store::{DirStore, KeyStore, StoreError, StoredCa};

use crate::metrics::CaMetrics;

/// Why the CA could not start or renew.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored CA: {0}")]
    Ca(#[from] CaError),
    #[error(transparent)]
    Plugin(#[from] plugin::PluginError),
    #[error("the new root cannot join the trust bundle ({0}); still signing with the old CA")]
    Bundle(#[from] bundle::BundleError),
}

/// The running CA: the current signing CA and trust bundle (swapped atomically on renewal),
/// the issuance policy, and its metrics.
pub struct Authority {
    signing: watch::Sender<Arc<SigningCa>>,
    bundle: watch::Sender<TrustBundle>,
    policy: IssuancePolicy,
    metrics: CaMetrics,
}

impl Authority {
    pub fn new(
        signing: SigningCa,
        bundle: TrustBundle,
        policy: IssuancePolicy,
        metrics: CaMetrics,
    ) -> Self {
        metrics
            .root_expiry_seconds
            .set(authority::unix_secs(signing.not_after()));
        Self {
            signing: watch::Sender::new(Arc::new(signing)),
            bundle: watch::Sender::new(bundle),
            policy,
            metrics,
        }
    }

    pub fn policy(&self) -> &IssuancePolicy {
        &self.policy
    }

    pub fn metrics(&self) -> &CaMetrics {
        &self.metrics
    }

    /// The CA currently signing.
    pub fn signing(&self) -> Arc<SigningCa> {
        self.signing.borrow().clone()
    }

    /// The roots workloads should trust now.
    pub fn trust_bundle(&self) -> TrustBundle {
        self.bundle.borrow().clone()
    }

    /// Follows trust-bundle changes (e.g. to rewrite `root-cert.pem` or ConfigMaps).
    pub fn subscribe_bundle(&self) -> watch::Receiver<TrustBundle> {
        self.bundle.subscribe()
    }

    /// Swaps in a renewed signing CA; its root joins the trust bundle first (old roots stay
    /// until they are removed explicitly, so certificates they signed keep verifying).
    ///
    /// Fails closed: when the root cannot join the bundle (it is full), the signer is NOT
    /// switched, because workloads would reject everything the new CA signs. The error is
    /// logged here and returned.
    pub fn set_signing(&self, ca: SigningCa) -> Result<(), bundle::BundleError> {
        let root = ca.root().clone();
        let mut refused = None;
        self.bundle.send_if_modified(|b| match b.add(root) {
            Ok(added) => added,
            Err(e) => {
                refused = Some(e);
                false
            }
        });
        if let Some(e) = refused {
            tracing::error!(error = %e, "new signing CA refused: its root cannot be distributed");
            return Err(e);
        }
        self.metrics
            .root_expiry_seconds
            .set(authority::unix_secs(ca.not_after()));
        self.signing.send_replace(Arc::new(ca));
        Ok(())
    }

    /// Issues a workload certificate for an authenticated `identity`, counting and logging the
    /// outcome. `requester` (e.g. the peer address) only goes to the log.
    pub fn issue(
        &self,
        identity: &Identity,
        csr_pem: &str,
        requested_ttl_secs: i64,
        requester: &str,
    ) -> Result<Issued, IssueError> {
        let started = Instant::now();
        let signing = self.signing();
        let result = signing.issue_workload(
            &self.policy,
            identity,
            csr_pem,
            requested_ttl_secs,
            SystemTime::now(),
        );
        self.metrics
            .issuance_seconds
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(issued) => {
                self.metrics.issued.inc();
                tracing::info!(
                    identity = %identity.spiffe_id(&self.policy.trust_domain),
                    serial = %issued.serial_hex,
                    not_after = authority::unix_secs(issued.not_after),
                    requester,
                    "issued workload certificate"
                );
            }
            Err(e) => {
                self.metrics.refuse(e.reason());
                tracing::info!(%identity, requester, error = %e, "refused certificate request");
            }
        }
        result
    }
}

fn signing_from_stored(stored: &StoredCa) -> Result<SigningCa, CaError> {
    let cert = pem::parse_certs(stored.cert_pem.as_bytes())
        .map_err(CaError::Certificate)?
        .into_iter()
        .next()
        .ok_or_else(|| CaError::Certificate("stored CA certificate is empty".into()))?;
    SigningCa::new(&stored.key_pem, cert, Vec::new())
}

/// Loads the self-signed root from `store`, creating it if absent (create-if-absent, then use
/// what the store holds, so racing replicas agree) and re-issuing it with the same key when 80%
/// of its life is gone.
pub async fn bootstrap_self_signed(
    store: &dyn KeyStore,
    now: SystemTime,
) -> Result<SigningCa, BootstrapError> {
    let stored = match store.load().await? {
        Some(stored) => stored,
        None => {
            let (key_pem, cert_pem) = authority::generate_root(now)?;
            let created = store
                .create_if_absent(&StoredCa {
                    key_pem,
                    cert_pem,
                    version: None,
                })
                .await?;
            tracing::info!("self-signed root CA ready in the key store");
            created
        }
    };
    let stored = renew_if_due(store, stored, now).await?;
    Ok(signing_from_stored(&stored)?)
}

/// Re-issues the stored root with the same key when it is past [`authority::RENEW_AT_FRACTION`]
/// of its life; returns what the store holds afterwards.
pub async fn renew_if_due(
    store: &dyn KeyStore,
    stored: StoredCa,
    now: SystemTime,
) -> Result<StoredCa, BootstrapError> {
    let current = signing_from_stored(&stored)?;
    if !authority::needs_renewal(
        current.not_before(),
        current.not_after(),
        now,
        authority::RENEW_AT_FRACTION,
    ) {
        return Ok(stored);
    }
    let key = rcgen::KeyPair::from_pem(&stored.key_pem).map_err(|e| CaError::Key(e.to_string()))?;
    let cert_pem = authority::reissue_root(&key, now)?;
    let renewed = store
        .replace(
            &stored,
            &StoredCa {
                cert_pem,
                ..stored.clone()
            },
        )
        .await?;
    tracing::info!("re-issued the self-signed root with the same key");
    Ok(renewed)
}

/// Periodically re-checks the stored root and swaps a renewed one into `authority`.
///
/// It never generates a new key: if the stored CA has vanished (someone deleted the Secret),
/// the material in use is written back, because a fresh root would silently split trust.
pub fn spawn_root_renewal(
    authority: Arc<Authority>,
    store: Arc<dyn KeyStore>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = renew_once(&authority, store.as_ref()).await {
                tracing::warn!(error = %e, "root CA renewal check failed; will retry");
            }
        }
    })
}

async fn renew_once(authority: &Authority, store: &dyn KeyStore) -> Result<(), BootstrapError> {
    let stored = match store.load().await? {
        Some(stored) => stored,
        None => {
            let current = authority.signing();
            tracing::warn!("the stored CA is gone; writing back the root in use");
            let restore = StoredCa {
                key_pem: current.key_pem().to_string(),
                cert_pem: pem::cert_to_pem(current.cert_der()),
                version: None,
            };
            store.create_if_absent(&restore).await?
        }
    };
    let stored = renew_if_due(store, stored, SystemTime::now()).await?;
    let ca = signing_from_stored(&stored)?;
    if ca.cert_der() != authority.signing().cert_der() {
        authority.set_signing(ca)?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "issue_tests.rs"]
mod issue_tests;

#[cfg(test)]
#[path = "bootstrap_tests.rs"]
mod bootstrap_tests;
