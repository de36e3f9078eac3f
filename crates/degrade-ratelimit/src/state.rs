//! The GCRA cell: one `u64` theoretical arrival time (TAT) in nanoseconds since the limiter's
//! origin, updated by compare-and-swap; and the quota parameters, readable without a lock and
//! replaceable at run time.
//!
//! The decision itself is the pure function [`decide`] of (TAT, now, cost, tolerance, max wait).

use crate::config::Params;
use crate::sync::{AtomicU64, Mutex, Ordering, fence, spin};

/// The outcome of one GCRA decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Admit after `wait` nanoseconds (zero: at once); the new TAT is `tat`.
    Admit { tat: u64, wait: u64 },
    /// Over budget: the same request would be admitted `wait` nanoseconds from now.
    Reject { wait: u64 },
}

/// GCRA: a request of `cost` nanoseconds of budget is admitted when the TAT it would leave
/// behind lies at most `tolerance` (the burst) ahead of `now + max_wait`.
///
/// `retry` in a rejection is exact: at `now + wait` the same request is admitted if nothing
/// else consumed budget meanwhile (the TAT does not move while `now < tat`).
#[inline]
pub(crate) fn decide(tat: u64, now: u64, cost: u64, tolerance: u64, max_wait: u64) -> Decision {
    let new_tat = tat.max(now).saturating_add(cost);
    let earliest = new_tat.saturating_sub(tolerance);
    let wait = earliest.saturating_sub(now);
    if wait <= max_wait {
        Decision::Admit { tat: new_tat, wait }
    } else {
        Decision::Reject { wait }
    }
}

/// Carries a TAT measured in `from` nanoseconds per unit over to `to` nanoseconds per unit:
/// the debt (TAT ahead of now) keeps its size in *units*, so a quota change neither refills
/// nor drains the budget.
#[inline]
pub(crate) fn rescale(tat: u64, now: u64, from: u64, to: u64) -> u64 {
    if tat <= now || from == to || from == 0 {
        return tat;
    }
    let debt = u128::from(tat - now) * u128::from(to) / u128::from(from);
    now.saturating_add(u64::try_from(debt).unwrap_or(u64::MAX))
}

const FIELDS: usize = 6;

/// The parameters of the five levels behind a sequence lock: readers never block and never
/// write; the rare writer (a quota change) is serialised by a mutex.
pub(crate) struct ParamTable {
    seq: AtomicU64,
    values: [[AtomicU64; FIELDS]; 5],
    write: Mutex<()>,
}

impl ParamTable {
    pub(crate) fn new(params: [Params; 5]) -> Self {
        let t = Self {
            seq: AtomicU64::new(0),
            values: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            write: Mutex::new(()),
        };
        t.store(params);
        t
    }

    /// The parameters of level `level`.
    #[inline]
    pub(crate) fn load(&self, level: usize) -> Params {
        let v = &self.values[level];
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            let p = Params {
                unit_ns: v[0].load(Ordering::Relaxed),
                tolerance_ns: v[1].load(Ordering::Relaxed),
                cost_ns: v[2].load(Ordering::Relaxed),
                quota: v[3].load(Ordering::Relaxed),
                window_ns: v[4].load(Ordering::Relaxed),
                cost_units: v[5].load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            let s2 = self.seq.load(Ordering::Relaxed);
            if s1 == s2 && s1 & 1 == 0 {
                return p;
            }
            spin();
        }
    }

    pub(crate) fn store(&self, params: [Params; 5]) {
        let _g = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.seq.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::Release);
        for (v, p) in self.values.iter().zip(params) {
            v[0].store(p.unit_ns, Ordering::Relaxed);
            v[1].store(p.tolerance_ns, Ordering::Relaxed);
            v[2].store(p.cost_ns, Ordering::Relaxed);
            v[3].store(p.quota, Ordering::Relaxed);
            v[4].store(p.window_ns, Ordering::Relaxed);
            v[5].store(p.cost_units, Ordering::Relaxed);
        }
        self.seq.fetch_add(1, Ordering::Release);
    }
}

/// One shared GCRA budget: the TAT and the unit it was last written in.
pub(crate) struct Cell {
    tat: AtomicU64,
    unit_ns: AtomicU64,
    rescale: Mutex<()>,
}

impl Cell {
    pub(crate) fn new(unit_ns: u64) -> Self {
        Self {
            tat: AtomicU64::new(0),
            unit_ns: AtomicU64::new(unit_ns),
            rescale: Mutex::new(()),
        }
    }

    /// One decision of `cost_ns` at `now` under `p`. On admission the TAT has moved.
    #[inline]
    pub(crate) fn acquire(&self, p: &Params, cost_ns: u64, now: u64, max_wait: u64) -> Decision {
        if self.unit_ns.load(Ordering::Acquire) != p.unit_ns {
            self.carry_over(p.unit_ns, now);
        }
        let mut cur = self.tat.load(Ordering::Acquire);
        loop {
            match decide(cur, now, cost_ns, p.tolerance_ns, max_wait) {
                Decision::Admit { tat, wait } => {
                    match self.tat.compare_exchange_weak(
                        cur,
                        tat,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Decision::Admit { tat, wait },
                        Err(actual) => cur = actual,
                    }
                }
                reject => return reject,
            }
        }
    }

    /// The quota (or the level) changed: re-express the debt in the new unit. Slow path, once
    /// per change.
    #[cold]
    fn carry_over(&self, to: u64, now: u64) {
        let _g = self.rescale.lock().unwrap_or_else(|e| e.into_inner());
        let from = self.unit_ns.load(Ordering::Acquire);
        if from == to {
            return;
        }
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(rescale(t, now, from, to))
            });
        self.unit_ns.store(to, Ordering::Release);
    }

    /// The TAT, for tests and snapshots.
    pub(crate) fn tat(&self) -> u64 {
        self.tat.load(Ordering::Acquire)
    }
}

#[cfg(all(test, degrade_loom))]
mod loom_models {
    //! Run with `RUSTFLAGS="--cfg degrade_loom" CARGO_TARGET_DIR=target/loom cargo test -p
    //! degrade-ratelimit --release --lib loom_models`.
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn params(unit_ns: u64, burst: u64) -> Params {
        Params {
            unit_ns,
            tolerance_ns: unit_ns * burst,
            cost_ns: unit_ns,
            cost_units: 1,
            quota: 1,
            window_ns: unit_ns,
        }
    }

    fn admitted(d: Decision) -> u64 {
        u64::from(matches!(d, Decision::Admit { .. }))
    }

    /// Two threads race for a budget of one: exactly one wins, and the TAT moved once.
    #[test]
    fn racing_requests_never_overspend_the_budget() {
        loom::model(|| {
            let p = params(10, 1);
            let cell = Arc::new(Cell::new(10));
            let c = Arc::clone(&cell);
            let t = thread::spawn(move || admitted(c.acquire(&p, 10, 0, 0)));
            let mine = admitted(cell.acquire(&p, 10, 0, 0));
            let theirs = t.join().unwrap();
            assert_eq!(mine + theirs, 1);
            assert_eq!(cell.tat(), 10);
        });
    }

    /// Two threads, budget of two: both win and the TAT holds both costs.
    #[test]
    fn racing_requests_both_fit_a_budget_of_two() {
        loom::model(|| {
            let p = params(10, 2);
            let cell = Arc::new(Cell::new(10));
            let c = Arc::clone(&cell);
            let t = thread::spawn(move || admitted(c.acquire(&p, 10, 0, 0)));
            let mine = admitted(cell.acquire(&p, 10, 0, 0));
            assert_eq!(mine + t.join().unwrap(), 2);
            assert_eq!(cell.tat(), 20);
        });
    }

    /// A reader racing a quota change sees the old parameters or the new ones, never a mix.
    /// The writer stores thirty values, so preemptions are bounded to keep the model small.
    #[test]
    fn a_quota_change_is_never_read_torn() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        builder.check(|| {
            let a = params(10, 1);
            let b = params(1000, 5);
            let table = Arc::new(ParamTable::new([a; 5]));
            let w = Arc::clone(&table);
            let t = thread::spawn(move || w.store([b; 5]));
            let seen = table.load(0);
            assert!(seen == a || seen == b, "torn read: {seen:?}");
            t.join().unwrap();
            assert_eq!(table.load(3), b);
        });
    }

    /// Two requests under a new unit race to carry the old debt over: it is rescaled exactly
    /// once (one unit of debt at 10 ns becomes one unit at 100 ns), and both requests are
    /// decided under the new unit.
    #[test]
    fn the_debt_is_carried_over_once() {
        loom::model(|| {
            let old = params(10, 3);
            let cell = Arc::new(Cell::new(10));
            assert!(matches!(
                cell.acquire(&old, 10, 0, 0),
                Decision::Admit { .. }
            ));
            let new = params(100, 3);
            let c = Arc::clone(&cell);
            let t = thread::spawn(move || admitted(c.acquire(&new, 100, 0, 0)));
            let mine = admitted(cell.acquire(&new, 100, 0, 0));
            assert_eq!(mine + t.join().unwrap(), 2);
            assert_eq!(cell.tat(), 300);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_cell_admits_the_burst_then_rejects_with_the_exact_wait() {
        // 10 ns per unit, burst 3 → tolerance 30.
        let mut tat = 0;
        for _ in 0..3 {
            match decide(tat, 0, 10, 30, 0) {
                Decision::Admit { tat: t, wait: 0 } => tat = t,
                d => panic!("{d:?}"),
            }
        }
        assert_eq!(decide(tat, 0, 10, 30, 0), Decision::Reject { wait: 10 });
        assert!(matches!(
            decide(tat, 10, 10, 30, 0),
            Decision::Admit { wait: 0, .. }
        ));
        assert!(matches!(
            decide(tat, 9, 10, 30, 0),
            Decision::Reject { wait: 1 }
        ));
    }

    #[test]
    fn cost_above_tolerance_never_passes() {
        assert_eq!(decide(0, 0, 31, 30, 0), Decision::Reject { wait: 1 });
    }

    #[test]
    fn rescale_keeps_debt_in_units() {
        // 5 units of debt at 10 ns/unit → 5 units at 100 ns/unit.
        assert_eq!(rescale(150, 100, 10, 100), 600);
        assert_eq!(rescale(50, 100, 10, 100), 50);
    }

    #[test]
    fn param_table_round_trips() {
        let p = Params {
            unit_ns: 7,
            tolerance_ns: 70,
            cost_ns: 7,
            quota: 3,
            window_ns: 21,
            cost_units: 1,
        };
        let t = ParamTable::new([p; 5]);
        assert_eq!(t.load(4), p);
        let q = Params { unit_ns: 9, ..p };
        t.store([q; 5]);
        assert_eq!(t.load(0), q);
    }
}
