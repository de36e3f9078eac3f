//! Behaviour of degrade-core's recycled objects (`recycle`) that the other tests left
//! unpinned, found by mutation testing (`cargo xtask mutants --scope cells`, see
//! `docs/mutants.md`).

use degrade_core::recycle::{Held, Pool, Recycle};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
struct InFlight(AtomicU64);

impl Recycle for InFlight {
    fn is_idle(&self) -> bool {
        self.0.load(Ordering::Acquire) == 0
    }
    fn reset(&self) {}
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct ZeroSized;

#[test]
fn a_zero_sized_value_is_held_as_a_static_reference_its_clones_share() {
    let held = Held::new(ZeroSized);
    assert!(held.is_static());
    let clone = held.clone();
    assert!(clone.is_static());
    assert_eq!(*clone, ZeroSized);
    let sized = Held::new(7u32);
    assert!(!sized.is_static());
    assert_eq!(*sized.clone(), 7);
}

#[test]
fn pools_holds_and_held_values_debug_as_their_kind() {
    static POOL: Pool<InFlight> = Pool::new();
    assert_eq!(format!("{POOL:?}"), "Pool { .. }");
    let owned = POOL.take(InFlight::default);
    assert_eq!(format!("{owned:?}"), "Pooled { .. }");
    assert_eq!(format!("{:?}", Held::new(7u32)), "Held(7)");
    assert_eq!(format!("{:?}", Held::new(ZeroSized)), "Held(ZeroSized)");
}

#[test]
fn a_hold_reads_the_object_its_pool_made_and_keeps_it_once_dropped() {
    static POOL: Pool<InFlight> = Pool::new();
    let owned = POOL.take(|| InFlight(AtomicU64::new(3)));
    assert_eq!(owned.0.load(Ordering::Relaxed), 3, "through Deref");
    let object = owned.get();
    assert!(std::ptr::eq(object, &*owned));
    drop(owned);
    assert_eq!(POOL.counts(), (1, 0, 1), "parked with calls in flight");
    object.0.store(0, Ordering::Release);
    let next = POOL.take(InFlight::default);
    assert!(std::ptr::eq(next.get(), object), "recycled once idle");
    assert_eq!(POOL.counts(), (1, 0, 0));
}
