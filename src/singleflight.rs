//! Single-flight: concurrent callers asking for the same key share one computation instead of
//! each starting their own (one TokenReview per token, one namespace GET per namespace).
//!
//! The in-flight entry belongs to the callers waiting on it: each holds a guard, and the last
//! guard to go removes the entry, whether its caller got the answer or was cancelled (a client
//! reset, a gRPC deadline). So the map holds at most one entry per key *being waited on*, never
//! one per key ever asked for.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OnceCell;

/// Shares one computation per key among concurrent callers. See the module documentation.
pub struct SingleFlight<K, V> {
    in_flight: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            in_flight: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `work` for `key` unless a computation for `key` is already running, in which case
    /// this waits for that one's result instead. If the caller running `work` is cancelled, a
    /// waiting caller takes over with its own `work`.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let joined = Joined::new(self, key);
        joined.cell().get_or_init(work).await.clone()
    }

    /// Keys with a computation in progress.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// How many callers are waiting on `key` (0 when none).
    pub fn waiters(&self, key: &K) -> usize {
        self.lock()
            .get(key)
            .map_or(0, |cell| Arc::strong_count(cell) - 1)
    }

    // Never held across an await: every critical section is a few map operations.
    fn lock(&self) -> MutexGuard<'_, HashMap<K, Arc<OnceCell<V>>>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One caller's share of an in-flight computation; dropping it (answered or cancelled) removes
/// the entry when no other caller still waits on it.
struct Joined<'a, K: Hash + Eq + Clone, V: Clone> {
    flights: &'a SingleFlight<K, V>,
    key: K,
    cell: Option<Arc<OnceCell<V>>>,
}

impl<'a, K: Hash + Eq + Clone, V: Clone> Joined<'a, K, V> {
    fn new(flights: &'a SingleFlight<K, V>, key: K) -> Self {
        let cell = flights.lock().entry(key.clone()).or_default().clone();
        Self {
            flights,
            key,
            cell: Some(cell),
        }
    }

    fn cell(&self) -> &OnceCell<V> {
        // Only `drop` takes the cell out.
        self.cell.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for Joined<'_, K, V> {
    fn drop(&mut self) {
        let mut in_flight = self.flights.lock();
        // Clones and drops of the cell happen under the lock, so the count is exact: 1 means
        // only the map still holds it, i.e. nobody waits.
        drop(self.cell.take());
        if in_flight
            .get(&self.key)
            .is_some_and(|cell| Arc::strong_count(cell) == 1)
        {
            in_flight.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_computation_and_leave_nothing_behind() {
        let flights = Arc::new(SingleFlight::<&str, usize>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let callers: Vec<_> = (0..5)
            .map(|_| {
                let (flights, runs, mut released) =
                    (flights.clone(), runs.clone(), released.clone());
                tokio::spawn(async move {
                    flights
                        .run("k", || async move {
                            let _ = released.wait_for(|r| *r).await;
                            runs.fetch_add(1, Ordering::SeqCst) + 41
                        })
                        .await
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while flights.waiters(&"k") < 5 {
            assert!(std::time::Instant::now() < deadline, "callers never joined");
            tokio::task::yield_now().await;
        }
        release.send_replace(true);
        for caller in callers {
            assert_eq!(caller.await.unwrap(), 41);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_caller_leaves_nothing_behind_and_a_waiter_takes_over() {
        let flights = Arc::new(SingleFlight::<&str, &str>::new());
        let first = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("k", std::future::pending).await })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while flights.waiters(&"k") < 1 {
            assert!(std::time::Instant::now() < deadline, "caller never joined");
            tokio::task::yield_now().await;
        }
        // A second caller joins the stalled computation, then the first is cancelled: the
        // second runs its own work and gets an answer.
        let second = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("k", || async { "second" }).await })
        };
        while flights.waiters(&"k") < 2 {
            assert!(std::time::Instant::now() < deadline, "second never joined");
            tokio::task::yield_now().await;
        }
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        assert_eq!(second.await.unwrap(), "second");
        assert!(flights.is_empty());

        // Cancelled with nobody else waiting: the entry goes with it.
        let lone = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("lone", std::future::pending).await })
        };
        while flights.waiters(&"lone") < 1 {
            assert!(std::time::Instant::now() < deadline, "lone never joined");
            tokio::task::yield_now().await;
        }
        lone.abort();
        assert!(lone.await.unwrap_err().is_cancelled());
        assert!(flights.is_empty());
    }
}
