//! Packet classifier for the forwarding policy: tuple-space search.
//!
//! Rules are grouped by their *shape* (which fields are wildcards, the
//! prefix lengths of the addresses, the port-prefix lengths a port range
//! expands to). Each shape is one hash table from the masked key to the best
//! (lowest-numbered) rule with that key, so a lookup costs one hash probe
//! per shape, whatever the number of rules. Shapes are visited in the order
//! of their best rule and the walk stops as soon as no later shape can hold
//! an earlier rule (the priority pruning of Open vSwitch's classifier).
//!
//! First match wins: rule `i` beats rule `j` when `i < j`. Port ranges are
//! expanded into at most 30 aligned prefixes each; address-book names are
//! expanded by the compiler. The build refuses tables past `MAX_ENTRIES`.

use super::mem::fold_mul;
use ahash::RandomState;
use std::collections::HashMap;

/// The most entries (rules after expansion of ranges and names) accepted.
pub const MAX_ENTRIES: usize = 4_000_000;

/// One rule in normalised form. `None` fields are wildcards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclRule {
    pub pass: bool,
    pub in_port: Option<u16>,
    pub out_port: Option<u16>,
    pub v6: bool,
    pub proto: Option<u8>,
    /// (address, prefix length); IPv4 in the low 32 bits.
    pub src: (u128, u8),
    pub dst: (u128, u8),
    /// Inclusive ranges; (0, 65535) is any.
    pub sport: (u16, u16),
    pub dport: (u16, u16),
}

impl AclRule {
    /// A rule matching every packet of one family.
    pub fn any(v6: bool, pass: bool) -> AclRule {
        AclRule {
            pass,
            in_port: None,
            out_port: None,
            v6,
            proto: None,
            src: (0, 0),
            dst: (0, 0),
            sport: (0, u16::MAX),
            dport: (0, u16::MAX),
        }
    }

    /// The reference semantics, one rule at a time.
    pub fn matches(&self, k: &AclKey) -> bool {
        let width = if self.v6 { 128 } else { 32 };
        let pmatch = |(a, l): (u128, u8), x: u128| l == 0 || (a ^ x) >> (width - l as u32) == 0;
        self.v6 == k.v6
            && self.in_port.is_none_or(|p| p == k.in_port)
            && self.out_port.is_none_or(|p| p == k.out_port)
            && self.proto.is_none_or(|p| p == k.proto)
            && pmatch(self.src, k.src)
            && pmatch(self.dst, k.dst)
            && (self.sport.0..=self.sport.1).contains(&k.sport)
            && (self.dport.0..=self.dport.1).contains(&k.dport)
    }
}

/// What a packet is classified on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AclKey {
    pub src: u128,
    pub dst: u128,
    pub in_port: u16,
    pub out_port: u16,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub v6: bool,
}

/// Which fields a tuple keeps, and how much of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Shape {
    in_port: bool,
    out_port: bool,
    proto: bool,
    v6: bool,
    src_len: u8,
    dst_len: u8,
    sport_len: u8,
    dport_len: u8,
}

impl Shape {
    #[inline]
    fn mask(&self, k: &AclKey) -> AclKey {
        let width = if self.v6 { 128 } else { 32 };
        let amask =
            |l: u8| if l == 0 { 0 } else { (u128::MAX >> (128 - width)) & !((1u128 << (width - l as u32)) - 1) };
        let pmask = |l: u8| if l == 0 { 0 } else { !((1u32 << (16 - l as u32)) - 1) as u16 };
        AclKey {
            src: k.src & amask(self.src_len),
            dst: k.dst & amask(self.dst_len),
            in_port: if self.in_port { k.in_port } else { 0 },
            out_port: if self.out_port { k.out_port } else { 0 },
            sport: k.sport & pmask(self.sport_len),
            dport: k.dport & pmask(self.dport_len),
            proto: if self.proto { k.proto } else { 0 },
            v6: k.v6,
        }
    }
}

/// A key in the form the tables compare: the ports, in and out port
/// numbers in one word, the protocol apart, the addresses as they come
/// (an IPv4 table packs its two into one word).
#[derive(Debug, Clone, Copy)]
struct Probe {
    src: u128,
    dst: u128,
    /// in_port << 48 | out_port << 32 | sport << 16 | dport.
    misc: u64,
    proto: u8,
}

impl Probe {
    #[inline]
    fn of(k: &AclKey) -> Probe {
        let misc = (k.in_port as u64) << 48 | (k.out_port as u64) << 32 | (k.sport as u64) << 16 | k.dport as u64;
        Probe { src: k.src, dst: k.dst, misc, proto: k.proto }
    }

    /// Both IPv4 addresses in one word.
    #[inline]
    fn addrs4(&self) -> u64 {
        (self.src as u32 as u64) << 32 | self.dst as u32 as u64
    }
}

impl Shape {
    /// The masks `mask` applies, as a probe to AND with.
    fn probe_mask(&self) -> Probe {
        let ones = AclKey {
            src: u128::MAX,
            dst: u128::MAX,
            in_port: u16::MAX,
            out_port: u16::MAX,
            sport: u16::MAX,
            dport: u16::MAX,
            proto: u8::MAX,
            v6: self.v6,
        };
        Probe::of(&self.mask(&ones))
    }
}

/// An IPv4 table entry.
#[derive(Debug, Clone, Copy, Default)]
struct Entry4 {
    addrs: u64,
    misc: u64,
    /// proto << 1 | 1.
    tail: u32,
    rule: u32,
}

/// An IPv6 table entry.
#[derive(Debug, Clone, Copy, Default)]
struct Entry6 {
    src: u128,
    dst: u128,
    misc: u64,
    /// proto << 1 | 1.
    tail: u32,
    rule: u32,
}

/// One shape's exact-match table: open addressing, linear probing, at
/// most half full, over a keyed multiply-fold hash of the masked key (one
/// multiplication for IPv4). The probed array holds 4-byte tags (32 bits
/// of the hash, never 0; 0 marks an empty slot), so a table of thousands
/// of entries stays small in the cache; the entry (the whole masked key
/// and its best rule) is read only when a tag matches.
struct Tuple<E> {
    /// The lowest rule number in the table (the priority pruning).
    best: u32,
    /// The shape's masks in the entries' form (an entry ANDed with it is
    /// the masked key), so that a probe is masked with one AND a word.
    mask: E,
    tags: Vec<u32>,
    slots: Vec<E>,
}

#[inline]
fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32 | 1
}

#[inline]
fn tail(proto: u8) -> u32 {
    (proto as u32) << 1 | 1
}

/// What a table's entries are: the masked key in the table's form, with
/// its best rule.
trait Entry: Copy + Default {
    fn of(k: &Probe, rule: u32) -> Self;
    /// The key ANDed with a mask in the same form (`rule` is kept).
    fn masked(&self, mask: &Self) -> Self;
    fn hash(&self, seed: &[u64; 4]) -> u64;
    /// Whether the keys (not the rules) are equal.
    fn same_key(&self, other: &Self) -> bool;
    fn rule(&self) -> u32;
}

impl Entry for Entry4 {
    #[inline]
    fn of(k: &Probe, rule: u32) -> Entry4 {
        Entry4 { addrs: k.addrs4(), misc: k.misc, tail: tail(k.proto), rule }
    }

    #[inline]
    fn masked(&self, m: &Entry4) -> Entry4 {
        Entry4 { addrs: self.addrs & m.addrs, misc: self.misc & m.misc, tail: self.tail & m.tail, rule: self.rule }
    }

    /// One multiplication. (`tail` shares bits with the port numbers: keys
    /// this merges differ in the entry compare, only their probes are longer.)
    #[inline]
    fn hash(&self, seed: &[u64; 4]) -> u64 {
        fold_mul(self.addrs ^ seed[0], self.misc ^ seed[1] ^ (self.tail as u64) << 40)
    }

    #[inline]
    fn same_key(&self, o: &Entry4) -> bool {
        self.addrs == o.addrs && self.misc == o.misc && self.tail == o.tail
    }

    #[inline]
    fn rule(&self) -> u32 {
        self.rule
    }
}

impl Entry for Entry6 {
    #[inline]
    fn of(k: &Probe, rule: u32) -> Entry6 {
        Entry6 { src: k.src, dst: k.dst, misc: k.misc, tail: tail(k.proto), rule }
    }

    #[inline]
    fn masked(&self, m: &Entry6) -> Entry6 {
        Entry6 {
            src: self.src & m.src,
            dst: self.dst & m.dst,
            misc: self.misc & m.misc,
            tail: self.tail & m.tail,
            rule: self.rule,
        }
    }

    #[inline]
    fn hash(&self, seed: &[u64; 4]) -> u64 {
        let h = fold_mul((self.src as u64) ^ seed[0], ((self.src >> 64) as u64) ^ seed[1]);
        let h = fold_mul(h ^ self.dst as u64, ((self.dst >> 64) as u64) ^ seed[2]);
        fold_mul(h ^ self.misc, self.tail as u64 ^ seed[3])
    }

    #[inline]
    fn same_key(&self, o: &Entry6) -> bool {
        self.src == o.src && self.dst == o.dst && self.misc == o.misc && self.tail == o.tail
    }

    #[inline]
    fn rule(&self) -> u32 {
        self.rule
    }
}

impl<E: Entry> Tuple<E> {
    fn build(best: u32, mask: Probe, keys: &HashMap<AclKey, u32>, seed: &[u64; 4]) -> Self {
        let n = (keys.len() * 2).next_power_of_two().max(8);
        let mut tags = vec![0u32; n];
        let mut slots = vec![E::default(); n];
        for (k, &rule) in keys {
            let e = E::of(&Probe::of(k), rule);
            let h = e.hash(seed);
            let mut i = h as usize & (n - 1);
            while tags[i] != 0 {
                i = (i + 1) & (n - 1);
            }
            tags[i] = tag(h);
            slots[i] = e;
        }
        // (`tail` of a mask: the protocol's mask shifted, and the low bit
        // kept, as `tail` of a masked protocol has it.)
        Tuple { best, mask: E::of(&mask, 0), tags, slots }
    }

    #[inline]
    fn get(&self, p: &E, seed: &[u64; 4]) -> Option<u32> {
        let k = p.masked(&self.mask);
        let h = k.hash(seed);
        let (tag, mask) = (tag(h), self.tags.len() - 1);
        let mut i = h as usize & mask;
        loop {
            match self.tags[i] {
                0 => return None,
                x if x == tag && self.slots[i].same_key(&k) => return Some(self.slots[i].rule()),
                _ => i = (i + 1) & mask,
            }
        }
    }
}

/// The best rule of the first tables (in order of their best rule) that
/// match `p`, or u32::MAX: the walk stops at the first table that cannot
/// hold a better rule than the best found.
#[inline]
fn first_match<E: Entry>(tables: &[Tuple<E>], p: &E, seed: &[u64; 4]) -> u32 {
    let mut best = u32::MAX;
    for t in tables {
        if t.best >= best {
            break;
        }
        if let Some(r) = t.get(p, seed) {
            best = best.min(r);
        }
    }
    best
}

/// The frozen classifier.
#[derive(Default)]
pub struct Acl {
    /// The IPv4 shapes' tables, then the IPv6 ones', each in the order of
    /// their best rule.
    v4: Vec<Tuple<Entry4>>,
    v6: Vec<Tuple<Entry6>>,
    seed: [u64; 4],
    rules: Vec<AclRule>,
    entries: usize,
}

/// Splits an inclusive range into aligned prefixes: (value, prefix length).
pub fn range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (lo as u32, hi as u32);
    while lo <= hi {
        // The largest aligned block starting at lo that stays within hi.
        let mut size = if lo == 0 { 1 << 16 } else { 1u32 << lo.trailing_zeros().min(16) };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros() as u8));
        lo += size;
    }
    out
}

impl Acl {
    /// Builds the classifier; rule `i` has priority `i` (lower wins).
    pub fn build(rules: Vec<AclRule>) -> Result<Acl, String> {
        let r = RandomState::new();
        let seed = [r.hash_one(1u64), r.hash_one(2u64), r.hash_one(3u64), r.hash_one(4u64)];
        let mut tuples: Vec<(Shape, u32, HashMap<AclKey, u32>)> = Vec::new();
        let mut index: HashMap<Shape, usize> = HashMap::new();
        let mut entries = 0usize;
        for (prio, r) in rules.iter().enumerate() {
            let width = if r.v6 { 128 } else { 32 };
            if r.src.1 > width || r.dst.1 > width {
                return Err(format!("rule {prio}: prefix longer than the address"));
            }
            let sports = range_prefixes(r.sport.0, r.sport.1);
            let dports = range_prefixes(r.dport.0, r.dport.1);
            for &(sp, sl) in &sports {
                for &(dp, dl) in &dports {
                    let shape = Shape {
                        in_port: r.in_port.is_some(),
                        out_port: r.out_port.is_some(),
                        proto: r.proto.is_some(),
                        v6: r.v6,
                        src_len: r.src.1,
                        dst_len: r.dst.1,
                        sport_len: sl,
                        dport_len: dl,
                    };
                    let key = shape.mask(&AclKey {
                        src: r.src.0,
                        dst: r.dst.0,
                        in_port: r.in_port.unwrap_or(0),
                        out_port: r.out_port.unwrap_or(0),
                        sport: sp,
                        dport: dp,
                        proto: r.proto.unwrap_or(0),
                        v6: r.v6,
                    });
                    let t = *index.entry(shape).or_insert_with(|| {
                        tuples.push((shape, u32::MAX, HashMap::new()));
                        tuples.len() - 1
                    });
                    let t = &mut tuples[t];
                    t.1 = t.1.min(prio as u32);
                    // Rules come in priority order: the first with this key wins.
                    t.2.entry(key).or_insert(prio as u32);
                    entries += 1;
                    if entries > MAX_ENTRIES {
                        return Err(format!(
                            "the rules expand to more than {MAX_ENTRIES} classifier entries (port ranges and address-book names multiply)"
                        ));
                    }
                }
            }
        }
        tuples.sort_by_key(|t| t.1);
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (shape, best, map) in &tuples {
            if shape.v6 {
                v6.push(Tuple::build(*best, shape.probe_mask(), map, &seed));
            } else {
                v4.push(Tuple::build(*best, shape.probe_mask(), map, &seed));
            }
        }
        Ok(Acl { v4, v6, seed, rules, entries })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[AclRule] {
        &self.rules
    }

    /// Distinct shapes (the per-lookup cost).
    pub fn tuples(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Entries after range expansion.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The first matching rule: (rule index, pass).
    #[inline]
    pub fn classify(&self, k: &AclKey) -> Option<(u32, bool)> {
        let p = Probe::of(k);
        let best = if k.v6 {
            first_match(&self.v6, &Entry6::of(&p, 0), &self.seed)
        } else {
            first_match(&self.v4, &Entry4::of(&p, 0), &self.seed)
        };
        (best != u32::MAX).then(|| (best, self.rules[best as usize].pass))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_into_aligned_prefixes() {
        assert_eq!(range_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(range_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(range_prefixes(1024, 65535).len(), 6);
        for (lo, hi) in [(1, 65534), (1000, 1999), (5, 6), (8000, 8080), (65535, 65535)] {
            let p = range_prefixes(lo, hi);
            let mut covered = 0u32;
            for &(v, l) in &p {
                let size = 1u32 << (16 - l);
                assert_eq!(v as u32 % size, 0, "aligned");
                covered += size;
            }
            assert_eq!(covered, (hi - lo) as u32 + 1);
            assert!(p.len() <= 30);
        }
    }

    #[test]
    fn first_match_wins_and_misses_are_none() {
        let mut a = AclRule::any(false, true);
        a.proto = Some(6);
        a.dport = (5432, 5432);
        a.dst = (0xc0a8_0200, 24);
        let mut b = AclRule::any(false, false);
        b.dst = (0xc0a8_0200, 24);
        let acl = Acl::build(vec![a, b]).unwrap();
        let k = AclKey { dst: 0xc0a8_0207, proto: 6, dport: 5432, ..Default::default() };
        assert_eq!(acl.classify(&k), Some((0, true)));
        assert_eq!(acl.classify(&AclKey { dport: 22, ..k }), Some((1, false)));
        assert_eq!(acl.classify(&AclKey { dst: 0x0a00_0001, ..k }), None);
        assert_eq!(acl.classify(&AclKey { v6: true, ..k }), None);
    }
}
