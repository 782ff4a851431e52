//! [`Registry`]: the [`ViewRegistry`] the ADS server asks for live views. It follows the
//! inventory and the trust bundle, recomputes every view once per change (reusing what the
//! change cannot affect, see [`crate::xds::view`]), and wakes only the subscribers whose view
//! changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::watch;

use crate::ca::TrustBundle;
use crate::controller::inventory::{Inventory, ObjectKey};
use crate::policy::MeshConfig;
use crate::xds::view::{MeshViews, same_view};
use crate::xds::views::{ProxyClaim, ProxyView, ViewError, ViewRegistry};

/// Whether `claim` holds in `inventory`: the pod exists and is active, runs in the
/// certificate's namespace as its service account, and has the claimed address (if any).
pub fn check_claim(inventory: &Inventory, claim: &ProxyClaim) -> Result<(), ViewError> {
    let pod = inventory
        .pods
        .get(&claim.pod)
        .filter(|p| p.active)
        .ok_or_else(|| ViewError::UnknownPod(claim.pod.clone()))?;
    let account = match pod.workload.service_account.as_str() {
        "" => "default",
        sa => sa,
    };
    if pod.workload.namespace != claim.identity.namespace()
        || account != claim.identity.service_account()
    {
        return Err(ViewError::WrongIdentity {
            pod: claim.pod.clone(),
            actual: format!("{}/{account}", pod.workload.namespace),
            claimed: claim.identity.to_string(),
        });
    }
    if let Some(ip) = claim.instance_ip
        && !pod.ips.contains(&ip)
    {
        return Err(ViewError::WrongAddress {
            pod: claim.pod.clone(),
            ip,
        });
    }
    Ok(())
}

struct Subscriber {
    claim: ProxyClaim,
    tx: watch::Sender<Arc<ProxyView>>,
}

struct State {
    views: Arc<MeshViews>,
    subscribers: HashMap<ObjectKey, Vec<Subscriber>>,
}

struct Inner {
    state: Mutex<State>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent data (every update is a
        // whole replacement), so keep serving rather than poison every later stream.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs `views` and brings every subscriber up to date; closes the ones whose claim
    /// no longer holds and forgets the ones nobody listens to any more.
    fn publish(&self, views: Arc<MeshViews>) -> PublishStats {
        let mut stats = PublishStats::default();
        let mut state = self.lock();
        state.views = views.clone();
        state.subscribers.retain(|pod, subs| {
            subs.retain(|s| !s.tx.is_closed());
            subs.retain(|s| match check_claim(views.inventory(), &s.claim) {
                Ok(()) => true,
                Err(e) => {
                    tracing::info!(pod = %pod, error = %e, "proxy view closed: claim no longer holds");
                    stats.closed += 1;
                    false
                }
            });
            let Some(view) = views.view(pod) else {
                stats.closed += subs.len();
                return false;
            };
            for s in subs.iter() {
                let sent = s.tx.send_if_modified(|current| {
                    if same_view(current, view) {
                        false
                    } else {
                        *current = view.clone();
                        true
                    }
                });
                stats.pushed += usize::from(sent);
            }
            !subs.is_empty()
        });
        stats
    }
}

/// What one publication did (for logs and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// Subscribers whose view changed.
    pub pushed: usize,
    /// Subscribers closed because their claim no longer holds.
    pub closed: usize,
}

/// The view registry: cheap to clone, shared with the ADS server.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    /// Computes the views of the current inventory and bundle, then follows both in a task
    /// (on the current Tokio runtime) until the inventory channel closes or the registry is
    /// dropped. Recomputation runs on the blocking pool, once per change (changes that
    /// arrive during a computation are coalesced into the next one).
    pub fn start(
        mut inventory: watch::Receiver<Arc<Inventory>>,
        mut bundle: watch::Receiver<TrustBundle>,
        config: MeshConfig,
    ) -> Registry {
        let first = MeshViews::compute(
            inventory.borrow_and_update().clone(),
            &bundle.borrow_and_update(),
            &config,
            None,
        );
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                views: Arc::new(first),
                subscribers: HashMap::new(),
            }),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move { follow(weak, &mut inventory, &mut bundle, config).await });
        Registry { inner }
    }

    /// Open subscriptions (senders whose receivers may still be alive), for metrics and tests.
    pub fn subscribers(&self) -> usize {
        self.inner.lock().subscribers.values().map(Vec::len).sum()
    }

    /// The views currently published.
    pub fn current(&self) -> Arc<MeshViews> {
        self.inner.lock().views.clone()
    }
}

async fn follow(
    inner: Weak<Inner>,
    inventory: &mut watch::Receiver<Arc<Inventory>>,
    bundle: &mut watch::Receiver<TrustBundle>,
    config: MeshConfig,
) {
    let mut bundle_open = true;
    loop {
        tokio::select! {
            changed = inventory.changed() => if changed.is_err() { return },
            changed = bundle.changed(), if bundle_open => {
                // Without a bundle source the last bundle stays in force.
                if changed.is_err() { bundle_open = false; continue }
            }
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let snapshot = inventory.borrow_and_update().clone();
        let roots = bundle.borrow_and_update().clone();
        let previous = strong.lock().views.clone();
        let config = config.clone();
        let started = std::time::Instant::now();
        let computed = tokio::task::spawn_blocking(move || {
            MeshViews::compute(snapshot, &roots, &config, Some(&previous))
        })
        .await;
        match computed {
            Ok(views) => {
                let stats = strong.publish(Arc::new(views));
                tracing::debug!(
                    pushed = stats.pushed,
                    closed = stats.closed,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "proxy views recomputed"
                );
            }
            // A panic in the computation is a bug; keep the last views in force.
            Err(e) => tracing::error!(error = %e, "proxy view computation failed"),
        }
    }
}

impl ViewRegistry for Registry {
    fn subscribe(&self, claim: &ProxyClaim) -> Result<watch::Receiver<Arc<ProxyView>>, ViewError> {
        let mut state = self.inner.lock();
        check_claim(state.views.inventory(), claim)?;
        let view = state
            .views
            .view(&claim.pod)
            .cloned()
            .ok_or_else(|| ViewError::UnknownPod(claim.pod.clone()))?;
        let (tx, rx) = watch::channel(view);
        let subs = state.subscribers.entry(claim.pod.clone()).or_default();
        // A proxy that reconnects over and over must not grow its list: drop the dead ones.
        subs.retain(|s| !s.tx.is_closed());
        subs.push(Subscriber {
            claim: claim.clone(),
            tx,
        });
        Ok(rx)
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
