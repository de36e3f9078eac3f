//! The atomics behind the lock-free windows (and the limiter's locks), swapped for loom's under
//! `--cfg degrade_loom`.
//!
//! The windows in [`crate::window`] import their atomics from here so that `tests/loom.rs` can
//! explore every interleaving of the very same code. The cfg is `degrade_loom` rather than the
//! customary `loom` because tokio changes its own internals under `--cfg loom` and no longer
//! builds outside a loom model.

#[cfg(degrade_loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(degrade_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(degrade_loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(not(degrade_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};
