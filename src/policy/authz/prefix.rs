//! Prefix tables: every key of a set that is a prefix of a value, found by one binary search.
//! The decision index uses them for principal (and namespace…) prefixes, suffixes (stored
//! reversed) and address blocks (bit strings).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::index::at;

/// A key of a [`PrefixTable`]: a string of symbols (bytes or bits) ordered lexicographically,
/// a prefix before its extensions.
pub(super) trait Key: Ord {
    /// What is looked up: a value whose prefixes in the table are wanted.
    type Probe: ?Sized;
    /// Length in symbols.
    fn len(&self) -> usize;
    /// Length of the longest common prefix with another key.
    fn common(&self, other: &Self) -> usize;
    /// This key against a probe, in the same order as between keys.
    fn cmp_probe(&self, p: &Self::Probe) -> Ordering;
    /// Length of the longest common prefix with a probe.
    fn common_probe(&self, p: &Self::Probe) -> usize;
}

/// Byte strings (principal and namespace prefixes).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Bytes(pub(super) Box<[u8]>);

impl Key for Bytes {
    type Probe = [u8];
    fn len(&self) -> usize {
        self.0.len()
    }
    fn common(&self, other: &Self) -> usize {
        self.common_probe(&other.0)
    }
    fn cmp_probe(&self, p: &[u8]) -> Ordering {
        (*self.0).cmp(p)
    }
    fn common_probe(&self, p: &[u8]) -> usize {
        self.0.iter().zip(p).take_while(|(a, b)| a == b).count()
    }
}

/// Byte strings stored reversed (suffixes); probes are given forwards.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct RevBytes(pub(super) Box<[u8]>);

impl Key for RevBytes {
    type Probe = [u8];
    fn len(&self) -> usize {
        self.0.len()
    }
    fn common(&self, other: &Self) -> usize {
        self.0
            .iter()
            .zip(&*other.0)
            .take_while(|(a, b)| a == b)
            .count()
    }
    fn cmp_probe(&self, p: &[u8]) -> Ordering {
        self.0.iter().cmp(p.iter().rev())
    }
    fn common_probe(&self, p: &[u8]) -> usize {
        self.0
            .iter()
            .zip(p.iter().rev())
            .take_while(|(a, b)| a == b)
            .count()
    }
}

/// Bit strings: the first `len` bits of `bits` (the rest zero). Ordered by (bits, len), which
/// is lexicographic order for zero-padded bit strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Bits {
    pub(super) bits: u128,
    pub(super) len: u8,
}

impl Key for Bits {
    type Probe = Bits;
    fn len(&self) -> usize {
        usize::from(self.len)
    }
    fn common(&self, other: &Self) -> usize {
        self.common_probe(other)
    }
    fn cmp_probe(&self, p: &Bits) -> Ordering {
        self.cmp(p)
    }
    fn common_probe(&self, p: &Bits) -> usize {
        let same = (self.bits ^ p.bits).leading_zeros() as usize;
        same.min(usize::from(self.len)).min(usize::from(p.len))
    }
}

/// Every key of the table that is a prefix of a probe, in O(log n) plus the matches.
///
/// Keys are sorted; each knows its parent, the longest other key that is a prefix of it. For a
/// probe `v`, let `e` be the greatest key not after `v`: every key that is a prefix of `v` lies
/// between itself and `v` in the order, so it is a prefix of `e` too, that is `e` or one of its
/// ancestors; of those, the prefixes of `v` are the ones no longer than `e`'s common prefix
/// with `v`.
#[derive(Clone, Debug)]
pub(super) struct PrefixTable<K> {
    entries: Vec<Entry<K>>,
}

impl<K> Default for PrefixTable<K> {
    fn default() -> Self {
        PrefixTable {
            entries: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry<K> {
    key: K,
    parent: Option<u32>,
    ids: Box<[u32]>,
}

impl<K: Key> PrefixTable<K> {
    /// Builds the table from keys in order, each with its ids.
    pub(super) fn new(sorted: BTreeMap<K, Vec<u32>>) -> PrefixTable<K> {
        let mut entries: Vec<Entry<K>> = Vec::with_capacity(sorted.len());
        // The chain of keys that are prefixes of the last one: in sorted order the keys come
        // as a depth-first walk of their trie, so a key's ancestors are exactly what stays here.
        let mut chain: Vec<usize> = Vec::new();
        for (key, mut ids) in sorted {
            while let Some(&top) = chain.last() {
                let t = &entries[top].key;
                if t.common(&key) == t.len() {
                    break;
                }
                chain.pop();
            }
            ids.dedup();
            chain.push(entries.len());
            entries.push(Entry {
                parent: chain.iter().rev().nth(1).map(|&p| at(p)),
                key,
                ids: ids.into(),
            });
        }
        PrefixTable { entries }
    }

    /// Calls `found` with the ids of every key that is a prefix of `probe`, longest first.
    pub(super) fn find(&self, probe: &K::Probe, found: &mut impl FnMut(&[u32])) {
        let after = self
            .entries
            .partition_point(|e| e.key.cmp_probe(probe) != Ordering::Greater);
        let Some(mut i) = after.checked_sub(1) else {
            return;
        };
        let common = match self.entries.get(i) {
            Some(e) => e.key.common_probe(probe),
            None => return,
        };
        while let Some(e) = self.entries.get(i) {
            if e.key.len() <= common {
                found(&e.ids);
            }
            match e.parent {
                Some(p) => i = p as usize,
                None => break,
            }
        }
    }
}
