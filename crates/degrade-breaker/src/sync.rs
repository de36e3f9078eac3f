//! The atomics and the lock of the breaker, swapped for loom's under `--cfg degrade_loom` so
//! `tests/loom.rs` explores every interleaving of the very same code (see degrade-core's
//! `sync` module for why the cfg is not `loom`).

#[cfg(degrade_loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(degrade_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(degrade_loom))]
pub(crate) use std::sync::Mutex;
#[cfg(not(degrade_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
