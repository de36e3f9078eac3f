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
/// `wait` in a rejection is exact: at `now + wait` the same request is admitted if nothing
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

/// A cost and a tolerance in nanoseconds at `from` per unit, re-expressed at `to` per unit:
/// the cost rounded up and the tolerance down, so the conversion is never generous.
#[cold]
fn convert(cost: u64, tolerance: u64, from: u64, to: u64) -> (u64, u64) {
    let (from, to) = (u128::from(from.max(1)), u128::from(to));
    let cost = (u128::from(cost) * to).div_ceil(from);
    let tolerance = u128::from(tolerance) * to / from;
    (
        u64::try_from(cost).unwrap_or(u64::MAX),
        u64::try_from(tolerance).unwrap_or(u64::MAX),
    )
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

/// One shared GCRA budget: the TAT and the unit it is expressed in.
///
/// # Why the word carries an epoch
///
/// A quota or level change re-expresses the debt in the new unit (a *carry-over*, under a
/// mutex, once per change). A request decides lock-free: it reads the TAT, decides, and moves
/// the TAT by compare-and-swap. A thread that read the parameters before a change must never
/// decide against a TAT already carried over to the new unit (it would charge a tenth of a
/// unit, or see ten times the debt), and a compare-and-swap must not succeed on a word a
/// carry-over rewrote to the very value the thread read (ABA).
///
/// So every carry-over starts an *epoch* `{ start, unit, offset }`, published behind a
/// sequence lock, and the word holds `TAT + offset`. The carry-over picks the offset so that the
/// word only ever grows, across epochs too: a word names its epoch (the latest whose `start`
/// is at most the word), and a compare-and-swap from a word read earlier fails after any write
/// in between, a carry-over included. The offset shrinks back to zero as time passes the TAT,
/// so it stays within about one burst.
pub(crate) struct Cell {
    /// `TAT + offset` in nanoseconds; strictly increasing over the cell's life.
    word: AtomicU64,
    /// Sequence of the epoch fields: odd while a carry-over is in progress.
    seq: AtomicU64,
    /// The first word of the current epoch.
    start: AtomicU64,
    /// Nanoseconds per unit in the current epoch.
    unit_ns: AtomicU64,
    /// `word − TAT` in the current epoch.
    offset: AtomicU64,
    /// Serialises carry-overs (the only writers of the epoch fields).
    rescale: Mutex<()>,
}

#[derive(Debug, Clone, Copy)]
struct Epoch {
    start: u64,
    unit_ns: u64,
    offset: u64,
}

impl Cell {
    pub(crate) fn new(unit_ns: u64) -> Self {
        Self {
            word: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            start: AtomicU64::new(0),
            unit_ns: AtomicU64::new(unit_ns),
            offset: AtomicU64::new(0),
            rescale: Mutex::new(()),
        }
    }

    /// The current epoch. Waits (spins) only while a carry-over is being published.
    #[inline]
    fn epoch(&self) -> Epoch {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let e = Epoch {
                    start: self.start.load(Ordering::Relaxed),
                    unit_ns: self.unit_ns.load(Ordering::Relaxed),
                    offset: self.offset.load(Ordering::Relaxed),
                };
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return e;
                }
            }
            spin();
        }
    }

    /// One decision of `cost_ns` at `now` under `p`. On admission the TAT has moved.
    ///
    /// When the cell's unit is not `p`'s, the request carries the debt over to its unit once;
    /// if another thread has meanwhile carried it elsewhere again (it read other parameters),
    /// the request is decided in the cell's unit with its cost and burst converted, so two
    /// threads with different parameters never hand the cell back and forth for ever.
    #[inline]
    pub(crate) fn acquire(&self, p: &Params, cost_ns: u64, now: u64, max_wait: u64) -> Decision {
        let mut w = self.word.load(Ordering::Acquire);
        let mut carried = false;
        loop {
            // Read after the word: the epoch of `w` or a later one (the word was published
            // after its epoch).
            let e = self.epoch();
            if w < e.start {
                // `w` predates the epoch: it has been carried over since. Read it again.
                w = self.word.load(Ordering::Acquire);
                continue;
            }
            let (cost, tolerance) = if e.unit_ns == p.unit_ns {
                (cost_ns, p.tolerance_ns)
            } else if !carried {
                carried = true;
                self.carry_over(p.unit_ns, now);
                w = self.word.load(Ordering::Acquire);
                continue;
            } else {
                convert(cost_ns, p.tolerance_ns, p.unit_ns, e.unit_ns)
            };
            match decide(w - e.offset, now, cost, tolerance, max_wait) {
                Decision::Admit { tat, wait } => {
                    let next = tat.saturating_add(e.offset);
                    match self.word.compare_exchange_weak(
                        w,
                        next,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Decision::Admit { tat, wait },
                        Err(actual) => w = actual,
                    }
                }
                reject => return reject,
            }
        }
    }

    /// The quota (or the level) changed: re-express the debt in the new unit, in a new epoch.
    /// Slow path, once per change (and once more per thread that still holds the old
    /// parameters: it carries the debt back and is decided as if before the change).
    #[cold]
    fn carry_over(&self, to: u64, now: u64) {
        let _g = self.rescale.lock().unwrap_or_else(|e| e.into_inner());
        // Only carry-overs write the epoch, and they hold the mutex: this read is stable.
        let e = self.epoch();
        if e.unit_ns == to {
            return;
        }
        self.seq.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::Release);
        // Requests that read the old epoch before the sequence turned odd may still move the
        // word; each such move makes this compare-and-swap retry, and it is their progress.
        let mut w = self.word.load(Ordering::Acquire);
        let (next, offset) = loop {
            let tat = rescale(w.saturating_sub(e.offset), now, e.unit_ns, to);
            // Any TAT at or before now means "no debt": write now itself, so that the offset
            // needed to keep the word growing decays as time passes.
            let tat = tat.max(now);
            let next = tat.max(w.saturating_add(1));
            match self
                .word
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break (next, next - tat),
                Err(actual) => w = actual,
            }
        };
        self.start.store(next, Ordering::Relaxed);
        self.unit_ns.store(to, Ordering::Relaxed);
        self.offset.store(offset, Ordering::Relaxed);
        self.seq.fetch_add(1, Ordering::Release);
    }

    /// The TAT in the current epoch's unit, for snapshots and tests.
    pub(crate) fn tat(&self) -> u64 {
        loop {
            let w = self.word.load(Ordering::Acquire);
            let e = self.epoch();
            if w >= e.start {
                return w - e.offset;
            }
        }
    }

    /// The unit the TAT is expressed in, for tests.
    #[cfg(all(test, degrade_loom))]
    fn unit(&self) -> u64 {
        self.epoch().unit_ns
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

    /// A clone leasing two units (one compare-and-swap of twice the cost, as
    /// `limiter::Lease` takes them) races a single request for a budget of two: either the
    /// lease gets both units and the request is refused, or the request gets one and the lease
    /// is refused (a lease is all or nothing); the TAT holds exactly what was granted.
    #[test]
    fn a_lease_racing_a_request_is_all_or_nothing() {
        loom::model(|| {
            let p = params(10, 2);
            let cell = Arc::new(Cell::new(10));
            let c = Arc::clone(&cell);
            let t = thread::spawn(move || admitted(c.acquire(&p, 20, 0, 0)) * 2);
            let request = admitted(cell.acquire(&p, 10, 0, 0));
            let lease = t.join().unwrap();
            assert!(
                (lease, request) == (2, 0) || (lease, request) == (0, 1),
                "lease {lease}, request {request}"
            );
            assert_eq!(cell.tat(), 10 * (lease + request));
        });
    }

    /// Two clones leasing two units each from a budget of three: exactly one lease is granted.
    #[test]
    fn two_leases_never_overspend_the_budget() {
        loom::model(|| {
            let p = params(10, 3);
            let cell = Arc::new(Cell::new(10));
            let c = Arc::clone(&cell);
            let t = thread::spawn(move || admitted(c.acquire(&p, 20, 0, 0)));
            let mine = admitted(cell.acquire(&p, 20, 0, 0));
            assert_eq!(mine + t.join().unwrap(), 1);
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

    /// A request that read the old quota races one under the new quota, which carries the
    /// debt over to the new unit. Whatever the interleaving, each is decided against a TAT in
    /// its own unit and the debt afterwards is exactly the three units admitted, in the unit
    /// the cell ends in (issue 14: a thread holding the old parameters could decide against a
    /// TAT already rescaled to the new unit, and charge a tenth of a unit).
    #[test]
    fn a_stale_reader_never_decides_against_a_rescaled_tat() {
        loom::model(|| {
            let old = params(10, 20);
            let new = params(100, 20);
            let cell = Arc::new(Cell::new(10));
            assert!(matches!(
                cell.acquire(&old, 10, 0, 0),
                Decision::Admit { .. }
            ));
            let c = Arc::clone(&cell);
            let t = thread::spawn(move || admitted(c.acquire(&new, 100, 0, 0)));
            let mine = admitted(cell.acquire(&old, 10, 0, 0));
            assert_eq!(mine + t.join().unwrap(), 2);
            let (tat, unit) = (cell.tat(), cell.unit());
            assert_eq!(tat, 3 * unit, "debt {tat} ns at {unit} ns per unit");
        });
    }

    /// The same race from an empty budget, where carrying the debt over leaves the TAT's value
    /// unchanged: a compare-and-swap prepared before the carry-over must still fail after it
    /// (no ABA), so exactly one request is admitted and charged exactly one unit.
    #[test]
    fn a_carry_over_that_keeps_the_value_is_no_aba() {
        loom::model(|| {
            let old = params(10, 1);
            let new = params(100, 1);
            let cell = Arc::new(Cell::new(10));
            let c = Arc::clone(&cell);
            let t = thread::spawn(move || admitted(c.acquire(&new, 100, 0, 0)));
            let mine = admitted(cell.acquire(&old, 10, 0, 0));
            assert_eq!(mine + t.join().unwrap(), 1);
            let (tat, unit) = (cell.tat(), cell.unit());
            assert_eq!(tat, unit, "debt {tat} ns at {unit} ns per unit");
        });
    }

    /// Three threads under three units (a quota change and a level change in flight at once):
    /// every request is decided in the cell's unit of the moment, and the debt afterwards is
    /// exactly the four units admitted.
    #[test]
    fn three_units_in_flight_keep_the_debt_exact() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        builder.check(|| {
            let a = params(10, 20);
            let b = params(100, 20);
            let c = params(1000, 20);
            let cell = Arc::new(Cell::new(10));
            assert!(matches!(cell.acquire(&a, 10, 0, 0), Decision::Admit { .. }));
            let (c1, c2) = (Arc::clone(&cell), Arc::clone(&cell));
            let t1 = thread::spawn(move || admitted(c1.acquire(&b, 100, 0, 0)));
            let t2 = thread::spawn(move || admitted(c2.acquire(&c, 1000, 0, 0)));
            let mine = admitted(cell.acquire(&a, 10, 0, 0));
            assert_eq!(mine + t1.join().unwrap() + t2.join().unwrap(), 3);
            let (tat, unit) = (cell.tat(), cell.unit());
            assert_eq!(tat, 4 * unit, "debt {tat} ns at {unit} ns per unit");
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
    fn rescale_without_debt_or_from_a_zero_unit_leaves_the_tat() {
        // A TAT in the past is no debt, whatever the units; a zero `from` is never divided by.
        assert_eq!(rescale(50, 100, 10, 20), 50);
        assert_eq!(rescale(150, 100, 0, 10), 150);
        assert_eq!(rescale(150, 100, 10, 10), 150);
    }

    #[test]
    fn convert_rounds_the_cost_up_and_the_tolerance_down() {
        // 15 ns and 35 ns at 10 ns per unit are 1.5 and 3.5 units; at 4 ns per unit that is
        // 6 ns of cost and 14 ns of tolerance.
        assert_eq!(convert(15, 35, 10, 4), (6, 14));
        // 1.25 units of cost rounds up to 2 ns at 1 ns per unit; 1.25 of tolerance down to 1.
        assert_eq!(convert(5, 5, 4, 1), (2, 1));
        // A zero `from` counts as one nanosecond per unit.
        assert_eq!(convert(3, 7, 0, 2), (6, 14));
        // Past u64: saturated, never wrapped.
        assert_eq!(convert(u64::MAX, u64::MAX, 1, 2), (u64::MAX, u64::MAX));
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
