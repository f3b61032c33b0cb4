//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4): a lookup table
//! of prime size M in which each backend owns a share of the slots close
//! to its weight, built so that adding or removing one backend moves little
//! more than that backend's share.
//!
//! Each backend has a preference list over the slots, the permutation
//! `(offset + j * skip) mod M` with `offset` and `skip` derived from its
//! name by two independent hashes; backends take turns claiming their next
//! preferred free slot until the table is full. Weights (the paper's
//! section 3.4 leaves them to the reader): in turn `t` a backend of weight
//! `w` claims a slot only while it holds fewer than `t * w / w_max`, so
//! over the whole table each holds a share proportional to its weight.
//!
//! The hashes are fixed functions of the backend's name (FNV-1a then a
//! 64-bit finaliser, two seeds), not per-process random: every worker,
//! every restart and every appliance of an HA pair builds the same table.

/// The table size the Astara load balancer uses unless configured: a prime
/// well above 100 times any realistic member count (the paper's rule).
pub const DEFAULT_SIZE: u32 = 65_537;

/// Why a table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("maglev table size {0} is not a prime")]
    NotPrime(u32),
    #[error("maglev table size {size} is too small for {members} members (at least 10 slots per member)")]
    TooSmall { size: u32, members: usize },
    #[error("more than {max} members", max = u16::MAX)]
    TooMany,
}

/// One backend as the table sees it: a stable name (for example the
/// member's id, or "address:port") and a weight (0: takes no new flows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevMember<'a> {
    pub name: &'a [u8],
    pub weight: u32,
}

/// A built table: the member index (into the slice given to `build`) of
/// every slot. Read-only once built; shared by the workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevTable {
    slots: Box<[u16]>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over `seed` then `data`, finished with the MurmurHash3 64-bit
/// finaliser (FNV alone mixes its last bytes poorly).
pub fn name_hash(data: &[u8], seed: u64) -> u64 {
    let mut h = FNV_OFFSET;
    for b in seed.to_le_bytes().iter().chain(data) {
        h ^= *b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The first slot and the stride of a member's preference list.
pub fn offset_skip(name: &[u8], size: u32) -> (u32, u32) {
    let m = size as u64;
    let offset = name_hash(name, 0x6d61_676c_6576_3031) % m;
    let skip = name_hash(name, 0x6d61_676c_6576_3032) % (m - 1) + 1;
    (offset as u32, skip as u32)
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u64;
    while d * d <= n as u64 {
        if (n as u64).is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

impl MaglevTable {
    /// Builds the table of `size` slots (a prime). Members of weight 0 get
    /// no slot; with no member of positive weight every lookup is None.
    pub fn build(members: &[MaglevMember<'_>], size: u32) -> Result<MaglevTable, MaglevError> {
        if !is_prime(size) {
            return Err(MaglevError::NotPrime(size));
        }
        if members.len() > u16::MAX as usize {
            return Err(MaglevError::TooMany);
        }
        if (size as u64) < 10 * members.len() as u64 {
            return Err(MaglevError::TooSmall { size, members: members.len() });
        }
        const EMPTY: u16 = u16::MAX;
        let mut slots = vec![EMPTY; size as usize].into_boxed_slice();
        // (member index, offset, skip, next preference j, slots held, weight)
        struct Turn {
            idx: u16,
            offset: u64,
            skip: u64,
            next: u64,
            held: u64,
            weight: u64,
        }
        let mut turns: Vec<Turn> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.weight > 0)
            .map(|(i, m)| {
                let (offset, skip) = offset_skip(m.name, size);
                Turn {
                    idx: i as u16,
                    offset: offset as u64,
                    skip: skip as u64,
                    next: 0,
                    held: 0,
                    weight: m.weight as u64,
                }
            })
            .collect();
        let Some(w_max) = turns.iter().map(|t| t.weight).max() else {
            return Ok(MaglevTable { slots });
        };
        let m = size as u64;
        let mut filled = 0u64;
        let mut round = 0u64;
        'fill: loop {
            round += 1;
            for t in turns.iter_mut() {
                // A lighter member sits out the turns it is ahead of its share.
                if t.held * w_max >= round * t.weight {
                    continue;
                }
                let slot = loop {
                    let c = (t.offset + t.next * t.skip) % m;
                    t.next += 1;
                    if slots[c as usize] == EMPTY {
                        break c;
                    }
                };
                slots[slot as usize] = t.idx;
                t.held += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Ok(MaglevTable { slots })
    }

    pub fn size(&self) -> u32 {
        self.slots.len() as u32
    }

    /// The member index for a flow hash (64 well-mixed bits); None when no
    /// member takes flows. The slot is the hash scaled to the table
    /// (multiply and shift: no division on the per-flow path).
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<u16> {
        let i = ((hash as u128 * self.slots.len() as u128) >> 64) as usize;
        let s = self.slots.get(i).copied().unwrap_or(u16::MAX);
        (s != u16::MAX).then_some(s)
    }

    /// Slots held by each of `members` members.
    pub fn shares(&self, members: usize) -> Vec<u32> {
        let mut v = vec![0u32; members];
        for &s in self.slots.iter() {
            if let Some(c) = v.get_mut(s as usize) {
                *c += 1;
            }
        }
        v
    }

    pub fn slots(&self) -> &[u16] {
        &self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.{}.{}:80", i / 250, i % 250 + 1)).collect()
    }

    fn members<'a>(names: &'a [String], weights: &[u32]) -> Vec<MaglevMember<'a>> {
        names.iter().zip(weights).map(|(n, &w)| MaglevMember { name: n.as_bytes(), weight: w }).collect()
    }

    #[test]
    fn primes_and_sizes() {
        assert!(is_prime(65_537) && is_prime(2) && is_prime(655_373));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(9));
        let n = names(3);
        let m = members(&n, &[1, 1, 1]);
        assert_eq!(MaglevTable::build(&m, 100), Err(MaglevError::NotPrime(100)));
        assert_eq!(MaglevTable::build(&m, 23), Err(MaglevError::TooSmall { size: 23, members: 3 }));
        let empty = MaglevTable::build(&[], 31).unwrap();
        assert_eq!(empty.lookup(12345), None);
        let zero = MaglevTable::build(&members(&n, &[0, 0, 0]), 31).unwrap();
        assert_eq!(zero.lookup(7), None);
    }

    #[test]
    fn the_hash_is_fixed() {
        // The same name gives the same preferences in every process and on
        // every machine: the value below was computed from the definition
        // by a separate Python script, not by this code.
        assert_eq!(offset_skip(b"10.0.0.1:80", DEFAULT_SIZE), (413, 49950));
        assert_ne!(offset_skip(b"10.0.0.2:80", DEFAULT_SIZE), (413, 49950));
    }

    #[test]
    fn weighted_shares_within_one_percent() {
        let n = names(6);
        let weights = [1, 1, 2, 3, 5, 8];
        let t = MaglevTable::build(&members(&n, &weights), DEFAULT_SIZE).unwrap();
        let total: u32 = weights.iter().sum();
        for (i, &held) in t.shares(6).iter().enumerate() {
            let want = DEFAULT_SIZE as f64 * weights[i] as f64 / total as f64;
            let err = (held as f64 - want).abs() / DEFAULT_SIZE as f64;
            assert!(err < 0.01, "member {i} (weight {}): {held} slots, want {want:.0}", weights[i]);
        }
        // A member of weight 0 (draining, or failed its health check) has none.
        let t = MaglevTable::build(&members(&n, &[1, 0, 1, 1, 1, 1]), DEFAULT_SIZE).unwrap();
        assert_eq!(t.shares(6)[1], 0);
    }

    #[test]
    fn removing_a_member_moves_its_share_and_little_more() {
        for count in [5usize, 20, 100] {
            let n = names(count);
            let all = members(&n, &vec![1; count]);
            let before = MaglevTable::build(&all, DEFAULT_SIZE).unwrap();
            // Remove member 3 by giving it no weight (indices stay put).
            let mut less = all.clone();
            less[3].weight = 0;
            let after = MaglevTable::build(&less, DEFAULT_SIZE).unwrap();
            let moved = before.slots().iter().zip(after.slots()).filter(|(a, b)| a != b).count();
            let share = before.shares(count)[3] as usize;
            let extra = (moved - share) as f64 / DEFAULT_SIZE as f64;
            assert!(extra < 0.01, "{count} members: {moved} slots moved, {share} were the removed member's");
            // Adding it back restores the same table.
            assert_eq!(MaglevTable::build(&all, DEFAULT_SIZE).unwrap(), before);
        }
    }
}
