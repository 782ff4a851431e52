//! Leader election on the `coordination.k8s.io/v1` Lease [`LEASE_NAME`] in the control plane
//! namespace, with the semantics of client-go's `leaderelection` package:
//!
//! * every [`RETRY_PERIOD`] a replica reads the Lease and decides ([`decide`]): create it when
//!   absent, renew it when it holds it, take it over when it is released or expired, else
//!   follow;
//! * "expired" is judged by our own clock: we remember when we last saw `holderIdentity` or
//!   `renewTime` change ([`Observation`]) and consider the Lease expired when that observation
//!   is older than `leaseDurationSeconds`, so clock skew between replicas does not matter;
//! * every write carries the `resourceVersion` we read: a 409 Conflict means another replica
//!   wrote first, and we re-read next round instead of forcing;
//! * a leader that cannot renew within [`RENEW_DEADLINE`] steps down ([`keep_leading`]), well
//!   before others may take over ([`LEASE_DURATION`] after their last observed change);
//! * on a clean shutdown the leader releases the Lease (empty `holderIdentity`), so the other
//!   replica takes over within one retry period instead of one lease duration.
//!
//! Leadership is published on a `watch::Receiver<bool>` ([`spawn`]); writers run while it is
//! `true` and stop as soon as it turns `false`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// One term's work for [`while_leading`]: a future borrowing the writer's state.
pub type TermWork<S> = for<'a> fn(&'a mut S) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Runs `work(state)` only while `leading` is `true`: it starts (from the beginning) each time
/// leadership is gained and is dropped the moment leadership is lost, so a writer that lost the
/// lease never finishes a write it began as leader. Ends when `work` returns or the leadership
/// channel closes. `what` names the work in the log line written when it pauses.
pub async fn while_leading<S>(
    mut leading: watch::Receiver<bool>,
    what: &'static str,
    mut state: S,
    work: TermWork<S>,
) {
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        let lost = async { leading.wait_for(|l| !*l).await.is_ok() };
        tokio::select! {
            () = work(&mut state) => return,
            still_running = lost => if !still_running { return },
        }
        tracing::debug!("not the leader; {what} paused");
    }
}

/// Name of the Lease in the control plane namespace.
pub const LEASE_NAME: &str = "palisade-controller-leader";
/// How long a Lease stays valid after its last observed change (client-go's default).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long a leader keeps leading without a successful renewal (client-go's default).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Time between two rounds (client-go's default).
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

// A leader stops before anyone may take over, with a retry period to spare: checked when the
// crate compiles (a test comparing constants could never fail at run time).
const _: () =
    assert!(RENEW_DEADLINE.as_millis() + RETRY_PERIOD.as_millis() < LEASE_DURATION.as_millis());

/// `leaseDurationSeconds` written on release (what client-go writes).
const RELEASED_DURATION_SECONDS: i32 = 1;

/// Why a round did not complete.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The API server refused or could not be reached.
    #[error("leader Lease {LEASE_NAME}: {0}")]
    Api(#[source] kube::Error),
    /// Another replica wrote the Lease between our read and our write (409 Conflict).
    #[error("leader Lease {LEASE_NAME} changed since it was read (409 Conflict)")]
    Conflict,
    /// The Lease we read has no `resourceVersion`, so a write could not be conditional.
    #[error("leader Lease {LEASE_NAME} has no resourceVersion; not writing unconditionally")]
    NoResourceVersion,
    /// The API server did not answer in time.
    #[error("leader Lease {LEASE_NAME}: no answer within {0:?}")]
    Timeout(Duration),
}

impl From<kube::Error> for LeaderError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) if status.code == 409 => Self::Conflict,
            e => Self::Api(e),
        }
    }
}

/// The fields of a Lease the election looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The holder; `None` when absent or empty (released).
    pub holder: Option<String>,
    pub renew_time: Option<Timestamp>,
    /// `leaseDurationSeconds`; [`LEASE_DURATION`] when absent or not positive.
    pub lease_duration: Duration,
    pub transitions: i32,
}

impl LeaseRecord {
    /// Reads the record out of a Lease; missing fields get safe defaults.
    pub fn from_lease(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        let seconds = spec.and_then(|s| s.lease_duration_seconds).unwrap_or(0);
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            lease_duration: u64::try_from(seconds)
                .ok()
                .filter(|s| *s > 0)
                .map_or(LEASE_DURATION, Duration::from_secs),
            transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
        }
    }
}

/// When we last saw the Lease's holder or renew time change, by our monotonic clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub holder: Option<String>,
    pub renew_time: Option<Timestamp>,
    pub at: Instant,
}

impl Observation {
    /// The observation after reading `record` at `now`: unchanged holder and renew time keep
    /// the earlier observation time; any change restarts it.
    pub fn update(previous: Option<&Observation>, record: &LeaseRecord, now: Instant) -> Self {
        match previous {
            Some(p) if p.holder == record.holder && p.renew_time == record.renew_time => p.clone(),
            _ => Self {
                holder: record.holder.clone(),
                renew_time: record.renew_time,
                at: now,
            },
        }
    }
}

/// What to do with the Lease this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it, held by us.
    Create,
    /// We hold it: renew it.
    Renew,
    /// It is released or expired: take it over (`leaseTransitions` + 1).
    TakeOver,
    /// Someone else holds a valid Lease: write nothing.
    Follow { holder: String },
}

/// The election rule (client-go's `tryAcquireOrRenew`), given what we read, when we last saw it
/// change, and the time now.
pub fn decide(
    identity: &str,
    lease: Option<&LeaseRecord>,
    observed_at: Instant,
    now: Instant,
) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    match &lease.holder {
        Some(holder) if holder == identity => Decision::Renew,
        None => Decision::TakeOver,
        Some(holder) => {
            if now.saturating_duration_since(observed_at) >= lease.lease_duration {
                Decision::TakeOver
            } else {
                Decision::Follow {
                    holder: holder.clone(),
                }
            }
        }
    }
}

/// How a round ended, for [`keep_leading`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundResult {
    /// We hold the Lease (created, renewed or taken over).
    Leading,
    /// Someone else holds a valid Lease.
    HeldByOther,
    /// The round failed (API error, conflict, timeout): we do not know.
    Failed,
}

/// Whether a leader whose last successful round started at `last_renewed` keeps leading after
/// a round that ended with `result` at `now`. Someone else holding the Lease ends leadership at
/// once; failures end it once [`RENEW_DEADLINE`] has passed without a renewal.
pub fn keep_leading(result: RoundResult, last_renewed: Instant, now: Instant) -> bool {
    match result {
        RoundResult::Leading => true,
        RoundResult::HeldByOther => false,
        RoundResult::Failed => now.saturating_duration_since(last_renewed) < RENEW_DEADLINE,
    }
}

/// This replica's identity: the pod name (`POD_NAME`, else the hostname) plus a random suffix,
/// so two processes never share one even when the name is not unique.
pub fn default_identity() -> String {
    let non_empty = |s: String| {
        let s = s.trim().to_owned();
        (!s.is_empty()).then_some(s)
    };
    let base = std::env::var("POD_NAME")
        .ok()
        .and_then(non_empty)
        .or_else(|| std::env::var("HOSTNAME").ok().and_then(non_empty))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .and_then(non_empty)
        })
        .unwrap_or_else(|| "palisade-controller".into());
    let mut suffix = [0u8; 4];
    if aws_lc_rs::rand::fill(&mut suffix).is_err() {
        suffix = std::process::id().to_be_bytes();
    }
    format!("{base}_{}", crate::hex(&suffix))
}

/// What a successful round found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Round {
    /// We hold the Lease now.
    Leading,
    /// `holder` holds a valid Lease.
    Following { holder: String },
}

/// The adapter: one replica's view of the Lease, and the writes it makes.
pub struct LeaderElector {
    api: Api<Lease>,
    namespace: String,
    identity: String,
    observation: Option<Observation>,
    /// The Lease as our last successful write left it (for the release), while we hold it.
    held: Option<Lease>,
}

impl LeaderElector {
    /// An elector for [`LEASE_NAME`] in `namespace`, competing as `identity`.
    pub fn new(client: kube::Client, namespace: &str, identity: impl Into<String>) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            identity: identity.into(),
            observation: None,
            held: None,
        }
    }

    /// The identity written into `holderIdentity`.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn params() -> PostParams {
        PostParams {
            field_manager: Some(super::FIELD_MANAGER.into()),
            ..PostParams::default()
        }
    }

    fn spec(&self, acquired: Timestamp, now: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: i32::try_from(LEASE_DURATION.as_secs()).ok(),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Records our own successful write: we saw the change now.
    fn wrote(&mut self, lease: Lease, now: Instant) {
        let record = LeaseRecord::from_lease(&lease);
        self.observation = Some(Observation::update(None, &record, now));
        self.held = Some(lease);
    }

    /// One round: read the Lease, [`decide`], and write at most once.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Round, LeaderError> {
        let now = Instant::now();
        let wall = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            self.held = None;
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(wall, wall, 0)),
            };
            // A 409 (AlreadyExists) means another replica created it first.
            let created = self.api.create(&Self::params(), &lease).await?;
            self.wrote(created, now);
            return Ok(Round::Leading);
        };
        let record = LeaseRecord::from_lease(&lease);
        let observation = Observation::update(self.observation.as_ref(), &record, now);
        let observed_at = observation.at;
        self.observation = Some(observation);
        let decision = decide(&self.identity, Some(&record), observed_at, now);
        let (acquired, transitions) = match decision {
            Decision::Follow { holder } => {
                self.held = None;
                return Ok(Round::Following { holder });
            }
            Decision::Renew => {
                let acquired = lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.acquire_time.as_ref())
                    .map_or(wall, |t| t.0);
                (acquired, record.transitions)
            }
            Decision::TakeOver | Decision::Create => (wall, record.transitions.saturating_add(1)),
        };
        if lease.metadata.resource_version.is_none() {
            return Err(LeaderError::NoResourceVersion);
        }
        let mut spec = self.spec(acquired, wall, transitions);
        if let Some(old) = lease.spec.take() {
            spec.strategy = old.strategy;
            spec.preferred_holder = old.preferred_holder;
        }
        lease.spec = Some(spec);
        let written = match self.api.replace(LEASE_NAME, &Self::params(), &lease).await {
            Ok(written) => written,
            Err(e) => {
                self.held = None;
                return Err(e.into());
            }
        };
        self.wrote(written, now);
        Ok(Round::Leading)
    }

    /// Gives the Lease up if our last write left us holding it: empty `holderIdentity`, so the
    /// next candidate takes over at once. Conditional on the `resourceVersion` of that write,
    /// so a Lease someone else has meanwhile taken is left alone. `Ok(false)` when there was
    /// nothing to release.
    pub async fn release(&mut self) -> Result<bool, LeaderError> {
        let Some(mut lease) = self.held.take() else {
            return Ok(false);
        };
        if lease.metadata.resource_version.is_none() {
            return Err(LeaderError::NoResourceVersion);
        }
        let now = MicroTime(Timestamp::now());
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(String::new());
        spec.lease_duration_seconds = Some(RELEASED_DURATION_SECONDS);
        spec.acquire_time = Some(now.clone());
        spec.renew_time = Some(now);
        self.api
            .replace(LEASE_NAME, &Self::params(), &lease)
            .await?;
        Ok(true)
    }

    /// Runs rounds every [`RETRY_PERIOD`] until `shutdown` completes, then releases the Lease
    /// if held. Leadership is published on the returned receiver (initially `false`); it turns
    /// `false` before the release, and the sender is dropped when the task ends.
    pub fn spawn(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> (watch::Receiver<bool>, JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        (rx, tokio::spawn(self.run(tx, shutdown)))
    }

    async fn run(mut self, leading: watch::Sender<bool>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        // Start of the last successful round, while leading.
        let mut last_renewed: Option<Instant> = None;
        loop {
            let started = Instant::now();
            // A leader's round must end before its renew deadline; a candidate's is bounded
            // the same way so a hung request cannot stall the election.
            let budget = last_renewed.map_or(RENEW_DEADLINE, |t| {
                RENEW_DEADLINE.saturating_sub(started.saturating_duration_since(t))
            });
            let result = if budget.is_zero() {
                // Out of time: the deadline is over whatever this round would answer.
                Err(LeaderError::Timeout(RENEW_DEADLINE))
            } else {
                tokio::time::timeout(budget, self.try_acquire_or_renew())
                    .await
                    .unwrap_or(Err(LeaderError::Timeout(budget)))
            };
            let round = match result {
                Ok(Round::Leading) => RoundResult::Leading,
                Ok(Round::Following { holder }) => {
                    tracing::debug!(%holder, "following the leader");
                    RoundResult::HeldByOther
                }
                Err(e) => {
                    tracing::warn!(error = %e, identity = %self.identity, "leader election round failed");
                    RoundResult::Failed
                }
            };
            let now = Instant::now();
            match (last_renewed, round) {
                (None, RoundResult::Leading) => {
                    tracing::info!(identity = %self.identity, lease = LEASE_NAME,
                        namespace = %self.namespace, "acquired leadership");
                    leading.send_replace(true);
                    last_renewed = Some(started);
                }
                (Some(_), RoundResult::Leading) => last_renewed = Some(started),
                (Some(t), round) if !keep_leading(round, t, now) => {
                    tracing::info!(identity = %self.identity, lease = LEASE_NAME,
                        namespace = %self.namespace, ?round, "lost leadership");
                    leading.send_replace(false);
                    last_renewed = None;
                    self.held = None;
                }
                _ => {}
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(RETRY_PERIOD) => {}
            }
        }
        leading.send_replace(false);
        match tokio::time::timeout(RETRY_PERIOD, self.release()).await {
            Ok(Ok(true)) => tracing::info!(identity = %self.identity, "released leadership"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release the leader Lease"),
            Err(_) => tracing::warn!("releasing the leader Lease timed out"),
        }
    }
}

/// Starts an elector for [`LEASE_NAME`] in `namespace` as `identity`; see
/// [`LeaderElector::spawn`].
pub fn spawn(
    client: kube::Client,
    namespace: &str,
    identity: impl Into<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    LeaderElector::new(client, namespace, identity).spawn(shutdown)
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
