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
