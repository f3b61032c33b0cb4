//! A small IPv4 address → address map for the NAT's floating IPs, read for
//! every new flow: a 1,024-bit filter rejects most addresses with one
//! multiply and one load, the rest is a binary search in a sorted array.

#[derive(Debug, Clone, Default)]
pub struct AddrMap {
    filter: [u64; 16],
    entries: Vec<(u32, u32)>,
}

#[inline]
fn bit(k: u32) -> usize {
    (k.wrapping_mul(0x9e37_79b1) >> 22) as usize
}

impl AddrMap {
    /// Adds or replaces `k`; returns the value it replaced.
    pub fn insert(&mut self, k: u32, v: u32) -> Option<u32> {
        match self.entries.binary_search_by_key(&k, |e| e.0) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, v)),
            Err(i) => {
                self.entries.insert(i, (k, v));
                let b = bit(k);
                self.filter[b >> 6] |= 1 << (b & 63);
                None
            }
        }
    }

    #[inline]
    pub fn get(&self, k: &u32) -> Option<&u32> {
        let b = bit(*k);
        if self.filter[b >> 6] >> (b & 63) & 1 == 0 {
            return None;
        }
        self.entries.binary_search_by_key(k, |e| e.0).ok().map(|i| &self.entries[i].1)
    }

    #[inline]
    pub fn contains_key(&self, k: &u32) -> bool {
        self.get(k).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.entries.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_a_hash_map() {
        let mut m = AddrMap::default();
        let mut h = std::collections::HashMap::new();
        let mut x = 0x1234_5678u32;
        for i in 0..2000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let k = x % 5000;
            assert_eq!(m.insert(k, i), h.insert(k, i));
        }
        assert_eq!(m.len(), h.len());
        for k in 0..6000u32 {
            assert_eq!(m.get(&k), h.get(&k), "{k}");
        }
    }
}
