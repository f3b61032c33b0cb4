//! `MaglevTable` against a reference written here from the paper
//! (Eisenbud et al., NSDI 2016, Pseudocode 1): the full permutation table,
//! then round-robin population. With equal weights the two must produce the
//! same table slot for slot; the only shared input is each backend's
//! (offset, skip), the paper's two hashes of its name.

use astara_dp::table::maglev::{DEFAULT_SIZE, MaglevMember, MaglevTable, offset_skip};

/// Pseudocode 1 of the paper, as written there.
fn reference(names: &[String], m: u32) -> Vec<i64> {
    let m = m as u64;
    let n = names.len();
    // permutation[i][j] = (offset + j * skip) mod M
    let permutation: Vec<Vec<u64>> = names
        .iter()
        .map(|name| {
            let (offset, skip) = offset_skip(name.as_bytes(), m as u32);
            (0..m).map(|j| (offset as u64 + j * skip as u64) % m).collect()
        })
        .collect();
    let mut next = vec![0usize; n];
    let mut entry = vec![-1i64; m as usize];
    let mut filled = 0u64;
    loop {
        for i in 0..n {
            let mut c = permutation[i][next[i]];
            while entry[c as usize] >= 0 {
                next[i] += 1;
                c = permutation[i][next[i]];
            }
            entry[c as usize] = i as i64;
            next[i] += 1;
            filled += 1;
            if filled == m {
                return entry;
            }
        }
    }
}

#[test]
fn maglev_matches_the_papers_pseudocode() {
    for (count, size) in [(3usize, 31u32), (10, 1009), (37, DEFAULT_SIZE)] {
        let names: Vec<String> = (0..count).map(|i| format!("member-{i}")).collect();
        let members: Vec<MaglevMember> = names.iter().map(|n| MaglevMember { name: n.as_bytes(), weight: 1 }).collect();
        let t = MaglevTable::build(&members, size).unwrap();
        let want = reference(&names, size);
        let got: Vec<i64> = t.slots().iter().map(|&s| s as i64).collect();
        assert_eq!(got, want, "{count} members, M = {size}");
    }
}
