//! Large, zero-initialised tables backed by anonymous memory advised for
//! transparent huge pages: a 64 MiB DIR-24-8 first level costs 16k TLB
//! entries with 4 KiB pages and 32 with 2 MiB pages.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A fixed-length `[u32]` in its own mapping, zero-filled lazily by the kernel
/// (untouched pages cost nothing), released on drop.
pub struct LargeTable {
    ptr: NonNull<u32>,
    len: usize,
    bytes: usize,
}

// SAFETY: LargeTable owns its mapping exclusively, like a Box<[u32]>.
unsafe impl Send for LargeTable {}
// SAFETY: shared access only reads through &[u32].
unsafe impl Sync for LargeTable {}

use crate::packet::huge::HUGE;
pub use crate::packet::huge::advise_huge;

/// One multiply-fold round (the wyhash/ahash mixing step): the 128-bit
/// product of the two words, halves xored. With random keys mixed into the
/// inputs it makes the flow hashes of the tables unpredictable.
#[inline(always)]
pub fn fold_mul(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Makes the kernel back every page of `v` now, contents unchanged: one
/// volatile read and write back per 4 KiB. A lazily zero-filled table
/// otherwise takes a page fault (and, with transparent huge pages, the
/// zeroing of 2 MiB) on the first write into each page, from the
/// forwarding path, as it fills.
pub fn prefault<T: Copy>(v: &mut [T]) {
    let (p, bytes) = (v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v));
    // Every 4 KiB from the start, and the last byte: a slice that does
    // not start on a page boundary ends in a page the steps miss.
    for off in (0..bytes).step_by(4096).chain(bytes.checked_sub(1)) {
        // SAFETY: off < bytes: a byte of the slice we hold exclusively,
        // initialised (T: Copy, a plain value), written back unchanged.
        unsafe { std::ptr::write_volatile(p.add(off), std::ptr::read_volatile(p.add(off))) }
    }
}

/// `prefault` for memory not yet holding values (a `Vec`'s spare
/// capacity): a zero byte is written per 4 KiB page, and in the last one.
pub fn prefault_uninit<T>(v: &mut [std::mem::MaybeUninit<T>]) {
    let (p, bytes) = (v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v));
    for off in (0..bytes).step_by(4096).chain(bytes.checked_sub(1)) {
        // SAFETY: off < bytes, inside uninitialised memory we hold
        // exclusively; writing a byte there makes no value observable.
        unsafe { std::ptr::write_volatile(p.add(off), 0) }
    }
}

impl LargeTable {
    /// Maps `len` zeroed u32 entries; None if the kernel refuses the mapping.
    /// `huge`: advise transparent huge pages (fewer TLB misses on a full
    /// table; but every touched 2 MiB region is zeroed whole, which a table
    /// of a few routes should not pay on each configuration push).
    pub fn zeroed(len: usize, huge: bool) -> Option<LargeTable> {
        let bytes = (len * 4).div_ceil(HUGE).max(1) * HUGE;
        // SAFETY: an anonymous private mapping with no address hint; the
        // result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        if huge {
            // SAFETY: p..p+bytes is the mapping just created; advice failing
            // (no THP support) only loses the speed-up.
            unsafe {
                libc::madvise(p, bytes, libc::MADV_HUGEPAGE);
            }
        }
        Some(LargeTable { ptr: NonNull::new(p as *mut u32)?, len, bytes })
    }

    /// Bytes of address space reserved (resident memory may be less).
    pub fn mapped_bytes(&self) -> usize {
        self.bytes
    }
}

impl Deref for LargeTable {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        // SAFETY: ptr is valid for len u32s for the life of self (mapped,
        // zero-initialised, aligned to a page).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for LargeTable {
    fn deref_mut(&mut self) -> &mut [u32] {
        // SAFETY: as in deref; &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for LargeTable {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `zeroed`.
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.bytes);
        }
    }
}

/// Hints the CPU to fetch the cache line holding `p` (no effect elsewhere).
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch(p as *const i8, core::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Pages of `bytes` bytes at `p` the kernel has backed (mincore), and
/// pages in all: for tests of `prefault`.
#[cfg(test)]
pub(crate) fn resident(p: *const u8, bytes: usize) -> (usize, usize) {
    let start = p as usize / 4096 * 4096;
    let end = (p as usize + bytes).next_multiple_of(4096);
    let pages = (end - start) / 4096;
    let mut v = vec![0u8; pages];
    // SAFETY: start..end covers mapped memory of the caller's allocation
    // (page-aligned outward); mincore only reports residency into `v`.
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, end - start, v.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore");
    (v.iter().filter(|&&b| b & 1 != 0).count(), pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefault_keeps_contents() {
        let mut v: Vec<u32> = (0..100_000).map(|i| i * 7).collect();
        prefault(&mut v);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32 * 7));
        let mut w: Vec<u64> = Vec::with_capacity(50_000);
        w.extend([1, 2, 3]);
        prefault_uninit(w.spare_capacity_mut());
        assert_eq!(w, [1, 2, 3]);
        w.resize(50_000, 9);
        assert!(w[3..].iter().all(|&x| x == 9));
    }

    #[test]
    fn zeroed_and_writable() {
        let mut t = LargeTable::zeroed(1 << 20, true).unwrap();
        assert_eq!(t.len(), 1 << 20);
        assert!(t.iter().step_by(4096).all(|&v| v == 0));
        t[12345] = 7;
        assert_eq!(t[12345], 7);
        assert_eq!(t.mapped_bytes(), 4 << 20);
    }
}
