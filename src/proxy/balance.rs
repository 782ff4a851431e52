//! Endpoint choice for a Service port: power of two choices on open connections. Two endpoints
//! are drawn at random and the one with fewer connections open through this proxy wins; that
//! avoids both the herd effect of "least loaded" and the imbalance of pure random.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Most endpoints tracked at once. An endpoint enters the map when a connection to it opens
/// and leaves when its last one closes, so the map holds only endpoints with open connections;
/// past this bound new endpoints are not tracked (they count as idle), never an unbounded map.
pub const MAX_TRACKED: usize = 4096;

/// Open connections per endpoint address.
#[derive(Debug, Default)]
pub struct EndpointLoad {
    open: Mutex<HashMap<SocketAddr, usize>>,
}

/// Counts one connection to an endpoint while alive.
#[derive(Debug)]
pub struct LoadGuard {
    load: Arc<EndpointLoad>,
    addr: Option<SocketAddr>,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        if let Some(addr) = self.addr {
            let mut open = self.load.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = open.get_mut(&addr) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&addr);
                }
            }
        }
    }
}

impl EndpointLoad {
    /// Open connections to `addr`.
    pub fn open(&self, addr: &SocketAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(addr).copied().unwrap_or(0)
    }

    /// Endpoints tracked now.
    pub fn tracked(&self) -> usize {
        self.open.lock().map_or(0, |o| o.len())
    }

    /// Picks one of `candidates` (power of two choices) and counts a connection to it until
    /// the guard is dropped. None when there is no candidate.
    pub fn pick(self: &Arc<Self>, candidates: &[SocketAddr]) -> Option<(usize, LoadGuard)> {
        if candidates.is_empty() {
            return None;
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let loads: Vec<usize> = candidates
            .iter()
            .map(|a| open.get(a).copied().unwrap_or(0))
            .collect();
        let index = choose(&loads, random(), random());
        let addr = candidates[index];
        let tracked = if let Some(n) = open.get_mut(&addr) {
            *n += 1;
            Some(addr)
        } else if open.len() < MAX_TRACKED {
            open.insert(addr, 1);
            Some(addr)
        } else {
            None
        };
        drop(open);
        Some((
            index,
            LoadGuard {
                load: self.clone(),
                addr: tracked,
            },
        ))
    }
}

/// Power of two choices over `loads` with two random numbers: the less loaded of two distinct
/// candidates (the first drawn on a tie). Pure, for tables.
pub fn choose(loads: &[usize], r1: u64, r2: u64) -> usize {
    let n = loads.len() as u64;
    if n <= 1 {
        return 0;
    }
    let a = (r1 % n) as usize;
    // A distinct second candidate: an offset of 1..n-1 from the first.
    let b = ((a as u64 + 1 + r2 % (n - 1)) % n) as usize;
    if loads[b] < loads[a] { b } else { a }
}

/// A random number from the standard library's per-process random hash keys (no extra
/// dependency; quality is ample for load balancing, and it is never used for security).
fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_table() {
        let cases: &[(&[usize], u64, u64, usize)] = &[
            (&[], 5, 5, 0),
            (&[7], 5, 5, 0),
            (&[3, 1], 0, 0, 1),
            (&[1, 3], 0, 0, 0),
            (&[1, 3], 1, 0, 0),
            (&[2, 2], 1, 0, 1),
            (&[5, 0, 9], 0, 1, 0),
            (&[5, 0, 9], 2, 0, 0),
            (&[5, 0, 9], 2, 1, 1),
        ];
        for (loads, r1, r2, want) in cases {
            assert_eq!(choose(loads, *r1, *r2), *want, "{loads:?} {r1} {r2}");
        }
        // Never the same candidate twice, never out of range.
        for n in 2..6usize {
            for r1 in 0..20 {
                for r2 in 0..20 {
                    let loads = vec![1; n];
                    assert!(choose(&loads, r1, r2) < n);
                }
            }
        }
    }

    #[test]
    fn the_most_loaded_endpoint_is_never_picked_and_entries_leave_when_closed() {
        let load = Arc::new(EndpointLoad::default());
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let mut guards = Vec::new();
        for _ in 0..3 {
            guards.push(load.pick(&[a]).unwrap().1);
        }
        assert_eq!(load.open(&a), 3);
        // With two candidates both are drawn, so b (idle) wins until it catches up.
        for expected_b in 1..=3 {
            let (i, g) = load.pick(&[a, b]).unwrap();
            assert_eq!(i, 1);
            guards.push(g);
            assert_eq!(load.open(&b), expected_b);
        }
        assert_eq!(load.tracked(), 2);
        drop(guards);
        assert_eq!(load.tracked(), 0, "no entry outlives its connections");
        assert!(load.pick(&[]).is_none());
    }

    #[test]
    fn tracking_is_bounded() {
        let load = Arc::new(EndpointLoad::default());
        let mut guards = Vec::new();
        for i in 0..(MAX_TRACKED + 10) {
            let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 80));
            guards.push(load.pick(&[addr]).unwrap().1);
        }
        assert_eq!(load.tracked(), MAX_TRACKED);
    }
}
