//! The exact rule set behind a route table: one hash map per prefix length,
//! shared by the IPv4 and IPv6 builders. Add and delete are exact, and the
//! longest match by probing lengths from longest to shortest is a reference
//! independent of the frozen tables.

use super::lpm4::{LpmError, MAX_NEXT_HOP};
use ahash::RandomState;
use std::collections::HashMap;
use std::hash::Hash;

/// An address type a route table is keyed by.
pub trait Addr: Copy + Eq + Hash {
    /// Address width in bits (32 or 128).
    const BITS: u8;
    /// The network part of `self` for a prefix of `len` bits.
    fn masked(self, len: u8) -> Self;
}

impl Addr for u32 {
    const BITS: u8 = 32;
    fn masked(self, len: u8) -> u32 {
        if len == 0 { 0 } else { self & (u32::MAX << (32 - len as u32)) }
    }
}

impl Addr for u128 {
    const BITS: u8 = 128;
    fn masked(self, len: u8) -> u128 {
        if len == 0 { 0 } else { self & (u128::MAX << (128 - len as u32)) }
    }
}

/// Routes by prefix length: `by_len[len]` maps a network to its next hop.
#[derive(Clone)]
pub struct PrefixRules<A: Addr> {
    by_len: Vec<HashMap<A, u32, RandomState>>,
}

impl<A: Addr> Default for PrefixRules<A> {
    fn default() -> Self {
        PrefixRules { by_len: (0..=A::BITS).map(|_| HashMap::default()).collect() }
    }
}

impl<A: Addr> PrefixRules<A> {
    /// Adds or replaces a route (host bits ignored); returns the replaced hop.
    pub fn insert(&mut self, prefix: A, len: u8, nh: u32) -> Result<Option<u32>, LpmError> {
        if len > A::BITS {
            return Err(LpmError::BadPrefixLen(len));
        }
        if nh > MAX_NEXT_HOP {
            return Err(LpmError::NextHopTooLarge(nh));
        }
        Ok(self.by_len[len as usize].insert(prefix.masked(len), nh))
    }

    pub fn remove(&mut self, prefix: A, len: u8) -> Option<u32> {
        self.by_len.get_mut(len as usize)?.remove(&prefix.masked(len))
    }

    pub fn get(&self, prefix: A, len: u8) -> Option<u32> {
        self.by_len.get(len as usize)?.get(&prefix.masked(len)).copied()
    }

    pub fn len(&self) -> usize {
        self.by_len.iter().map(|m| m.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The routes of one prefix length, in no particular order.
    pub fn of_len(&self, len: u8) -> impl Iterator<Item = (A, u32)> + '_ {
        self.by_len.get(len as usize).into_iter().flat_map(|m| m.iter().map(|(&a, &n)| (a, n)))
    }

    /// Longest match by probing each length from the longest down.
    pub fn lookup_slow(&self, ip: A) -> Option<u32> {
        (0..=A::BITS).rev().find_map(|l| self.by_len[l as usize].get(&ip.masked(l)).copied())
    }
}
