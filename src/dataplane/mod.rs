//! Worker loop, pipeline assembly, counters and snapshot publication.

pub mod counters;
pub mod exception;
pub mod handoff;
pub mod pipeline;
pub mod query;
pub mod worker;

pub use counters::{Counters, STAGE_COUNTERS, WorkerStats};
pub use exception::{Exception, PuntClass, PuntLimiter, PuntLimits, Punted};
pub use handoff::Handoff;
pub use pipeline::{Pipeline, dispatch, transmit};
pub use worker::{Worker, WorkerConfig};

use crate::stage::Snapshot;
use std::sync::Arc;

/// The published configuration: the control thread stores a new `Arc`, each
/// worker picks it up at its next burst; an old snapshot is freed when the
/// last worker has moved past it.
pub type Snapshots = Arc<arc_swap::ArcSwap<Snapshot>>;

pub fn snapshots(initial: Snapshot) -> Snapshots {
    Arc::new(arc_swap::ArcSwap::from_pointee(initial))
}

/// Moves the calling thread, and the threads it starts from now on, off the
/// workers' `cores` onto the other CPUs it may use, so the control threads
/// (host stack, API, health checks) are never scheduled onto a poll-mode
/// worker's CPU, where each wake-up would preempt the worker. Nothing
/// changes when the workers take every allowed CPU; returns whether the
/// mask changed. (Workers pin themselves explicitly, whatever they inherit.)
pub fn keep_off_cores(cores: &[usize]) -> bool {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: cpu_set_t is plain data; the calls read and write only the
    // set passed, of the size given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut set) != 0 {
            return false;
        }
        let before = libc::CPU_COUNT(&set);
        for &c in cores {
            if c < libc::CPU_SETSIZE as usize {
                libc::CPU_CLR(c, &mut set);
            }
        }
        let after = libc::CPU_COUNT(&set);
        after > 0 && after < before && libc::sched_setaffinity(0, size, &set) == 0
    }
}

/// A cycle counter: the TSC on x86_64 (constant rate on current CPUs),
/// nanoseconds elsewhere.
#[inline(always)]
pub fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: rdtsc has no preconditions.
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
    }
}
