//! Transparent huge pages for large heap buffers: memory read at random or
//! streamed over tens of MiB (a session table, a replayed traffic pattern)
//! otherwise misses the TLB on nearly every new 4 KiB page.

/// The size of a huge page (x86-64, aarch64 with 4 KiB base pages).
pub const HUGE: usize = 2 << 20;

/// Advises transparent huge pages for the whole 2 MiB regions inside a
/// heap allocation (a large `Vec` is its own anonymous mapping): a table
/// looked up at random over hundreds of MiB otherwise misses the TLB on
/// nearly every access. Best effort: nothing happens without THP.
pub fn advise_huge<T>(v: &[T]) {
    let start = v.as_ptr() as usize;
    let end = start + std::mem::size_of_val(v);
    let (a, b) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
    if b > a {
        // SAFETY: [a, b) lies inside the allocation behind `v`; madvise
        // with MADV_HUGEPAGE changes no contents, only how pages are backed.
        unsafe {
            libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_HUGEPAGE);
        }
    }
}
