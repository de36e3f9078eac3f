//! The atomics and mutexes behind the GCRA cell and the parameter table, swapped for loom's
//! under `--cfg degrade_loom` so that the loom models in `state.rs` explore the very same code.

#[cfg(degrade_loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(degrade_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering, fence};
#[cfg(not(degrade_loom))]
pub(crate) use std::sync::Mutex;
#[cfg(not(degrade_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering, fence};

/// A pause in a retry loop; under loom, a yield, so that the model can make progress.
#[inline]
pub(crate) fn spin() {
    #[cfg(degrade_loom)]
    loom::thread::yield_now();
    #[cfg(not(degrade_loom))]
    std::hint::spin_loop();
}
