//! Per-thread leases of in-flight slots: while the limit has headroom, a thread keeps the
//! slots its requests give back and admits its next requests from them, with a plain load and
//! store on a cache line of its own instead of two locked instructions on the word every
//! thread writes.
//!
//! * **What is counted.** The [`InFlight`] word counts the slots held by requests *and* the
//!   slots kept by threads; each thread's kept slots are in its own cell (`cells[shard]`,
//!   written by that thread only, read by anybody). So the word never counts fewer than are
//!   in flight, an admit from a kept slot takes nothing the limit did not grant, and the true
//!   number in flight is the word minus the cells ([`Leases::in_flight`]). A timed request
//!   reads no other thread's cell while the leases hold (their owners write them at every
//!   admit and release): it takes its own cell, a bound on the others' ([`View`]) and what
//!   they kept at this thread's last census (one timed request in [`CENSUS_EVERY`] reads every
//!   cell), within [`KEEP`] slots per other holder of the exact count, and reads every cell
//!   whenever that bound could change what the law reads.
//! * **When.** A thread keeps a released slot only while leases are on (the generation is
//!   even), it holds the lease of one limiter (the first it released into, until that lease
//!   ends or the thread has given [`MOVE_AFTER`] slots back to other limiters' words since:
//!   then the lease moves to the limiter it serves now), and it keeps at most [`keep_for`]
//!   the limit: one slot up to 31, [`KEEP`] (two) from 32 — so that from 16 on [`SHARDS`]
//!   holders keep at most half the limit. One slot serves a thread whose requests come one at
//!   a time: it admits from the slot and keeps it again when the request ends. Leases are
//!   revoked (the generation made odd) when a request has to enter the overload path
//!   (waiters, or the limit full), when the limit shrinks and when the limiter goes; from a
//!   limit of [`SHARE_RULE_FROM`] (16) also when an admit through the word finds half the
//!   limit in flight. They are allowed again when an admit through the word finds nobody
//!   waiting and under a quarter of the limit in flight — under 16, at most half of it and no
//!   priority held to its share (so a kept slot never admits a request past its share). A
//!   smaller limit keeps its leases while the word fills: two threads each calling one at a
//!   time under a limit of 2 keep a slot each and never touch the word; the request that
//!   finds the word full of kept slots enters the overload path, which revokes the leases and
//!   counts the idle ones' slots as free (below).
//! * **Giving back.** A thread whose lease was revoked gives its kept slots back to the word
//!   (one `fetch_sub`, which hands them to waiters if any) the next time it admits or
//!   releases through any limiter, and when it exits; a thread whose lease moves to another
//!   limiter gives them back the same way first.
//! * **The bound.** What can be stranded is what threads keep and do not touch again, and
//!   only while such a thread stays idle (a thread that serves requests gives its slots back
//!   at its next one). At most [`SHARDS`] threads hold a lease of a limiter, each keeping at
//!   most `keep_for(limit)` — from a limit of 16, at most half the limit while it holds (8 of
//!   16 to 31, 16 of 32 to 63, 16 of any larger one); under 16, one slot each, all of the limit
//!   when as many threads keep one. When the limit shrinks the leases are revoked, and what was
//!   kept under the larger limit (at most [`KEEP`] per holder, `KEEP × SHARDS` = 16 in all)
//!   stays with the idle holders until their next touch. A thread that races a revocation
//!   or a smaller limit (it read the generation even, or the larger `keep`, then kept the
//!   slot) keeps it until its next touch, within the same bounds. A limiter's in-flight word
//!   is recycled only once every kept slot is back, so a thread pins at most one word.
//!   Kept slots do not take from the limit: the limiter's overload path revokes the leases
//!   and counts slots kept under revoked leases ([`Leases::stranded`]) as free, so while the
//!   word still counts them, requests that find it full are admitted up to the limit's worth
//!   in flight. A holder that admits from its kept slot while that happens (it read the
//!   generation just before the revocation) can be one request past the limit, for as long
//!   as that request runs.

use super::inflight::{InFlight, Released};
use crate::sync::{AtomicU32, Ordering};
use crossbeam_utils::CachePadded;
use std::cell::Cell;

/// Threads that may hold a lease of one limiter at once (the others take the word's path).
pub(crate) const SHARDS: usize = 8;

/// The most slots a thread keeps, at any limit.
pub(crate) const KEEP: u32 = 2;

/// The slots a thread may keep under `limit`: one up to 31 — enough for a thread whose
/// requests come one at a time (it admits from the slot and keeps it again when the request
/// ends) — and [`KEEP`] from 32, where [`SHARDS`] holders of two keep at most half the limit;
/// none before a limit is set (0).
#[inline]
pub(crate) const fn keep_for(limit: u32) -> u32 {
    let fair = limit / (2 * SHARDS as u32);
    if limit == 0 {
        0
    } else if fair <= 1 {
        1
    } else {
        KEEP
    }
}

/// The smallest limit whose leases follow the share of it in flight (revoked at half, allowed
/// again under a quarter): twice one slot per holder, so that there [`SHARDS`] idle holders
/// keep at most half of it. A smaller limit (a service of a few slots) keeps its leases until
/// a request finds the word full and enters the overload path, which revokes them and counts
/// what idle threads keep as free; the half rule would revoke a limit of 2 at every admit.
pub(crate) const SHARE_RULE_FROM: u32 = 2 * SHARDS as u32;

/// Leases are on in an even generation.
#[inline]
fn on(generation: u32) -> bool {
    generation & 1 == 0
}

/// What a lease is taken from and given back to: a limiter's in-flight word, which outlives
/// its limiter.
pub(crate) trait Host: Sync + 'static {
    fn in_flight(&self) -> &InFlight;
    fn leases(&self) -> &Leases;
    /// Slots given back found waiters.
    fn after_release(&'static self, released: Released);
}

/// The leases of one in-flight word.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    /// Even while threads may keep slots, odd once revoked; a thread's lease is current while
    /// this is the generation it was taken in.
    generation: CachePadded<AtomicU32>,
    /// Bit `i`: `cells[i]` belongs to a thread.
    claimed: AtomicU32,
    /// The slots a thread may keep ([`keep_for`] the limit, set by [`Leases::limit`]); 0 (no
    /// lease) until a limit is set.
    keep: AtomicU32,
    /// The slots each thread keeps, written only by the thread that claimed the cell.
    cells: [CachePadded<AtomicU32>; SHARDS],
}

impl Leases {
    /// The limit is now `limit` (it was `before`): threads may keep [`keep_for`] it from now
    /// on; a smaller limit revokes the leases (what threads keep under the larger limit comes
    /// back at their next touch).
    pub(crate) fn limit(&self, limit: u32, before: u32) {
        self.keep.store(keep_for(limit), Ordering::Relaxed);
        if limit < before {
            self.revoke();
        }
    }

    /// Threads stop keeping slots and give back what they keep at their next touch.
    pub(crate) fn revoke(&self) {
        let g = self.generation.load(Ordering::Relaxed);
        if on(g) {
            let _ = self.generation.compare_exchange(
                g,
                g.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// Threads may keep slots again (the leases taken before stay ended).
    pub(crate) fn allow(&self) {
        let g = self.generation.load(Ordering::Relaxed);
        if !on(g) {
            let _ = self.generation.compare_exchange(
                g,
                g.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// After an admit through the word left `in_flight` in flight (kept slots included) under
    /// `limit`: from [`SHARE_RULE_FROM`], revoke at half the limit and allow again under a
    /// quarter; under it, allow again at half the limit or less when `unshared()` (no
    /// priority is held to a share of the limit), and leave the revoking to the overload path
    /// and a smaller limit. The word admits only while nobody waits, so leases are never
    /// allowed over a waiter.
    #[inline]
    pub(crate) fn adjust(&self, in_flight: u32, limit: u32, unshared: impl FnOnce() -> bool) {
        let g = self.generation.load(Ordering::Relaxed);
        let is_on = on(g);
        let n = u64::from(in_flight);
        if limit >= SHARE_RULE_FROM {
            if is_on && 2 * n >= u64::from(limit) {
                self.revoke();
            } else if !is_on && 4 * n < u64::from(limit) {
                self.allow();
            }
        } else if !is_on && n <= u64::from(limit / 2).max(1) && unshared() {
            self.allow();
        }
    }

    /// Slots kept under leases that have been revoked: counted by the word until their
    /// holders' next touch, and serving nobody meanwhile (a revoked holder gives its slots
    /// back before it admits again). 0 while leases are on.
    ///
    /// Read while a holder that saw the leases on just before their revocation admits from
    /// its kept slot, it may still count that slot: what it says is free can be one slot per
    /// such holder too many, for that moment.
    pub(crate) fn stranded(&self) -> u32 {
        if on(self.generation.load(Ordering::Acquire)) {
            0
        } else {
            self.kept()
        }
    }

    /// Slots kept by threads now.
    pub(crate) fn kept(&self) -> u32 {
        self.cells
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .fold(0u32, u32::saturating_add)
    }

    /// (requests in flight, requests waiting): the word less the kept slots. Read while threads
    /// move slots, it may count a slot that is being given back, never miss one in flight.
    pub(crate) fn in_flight(&self, word: &InFlight) -> (u32, u32) {
        let kept = self.kept();
        let (n, waiting) = word.load();
        (n.saturating_sub(kept), waiting)
    }

    /// A new owner (the word was recycled: no slot is kept): a generation no lease has.
    pub(crate) fn reset(&self) {
        self.revoke();
        self.allow();
    }
}

/// What a timed request learns of the kept slots without reading another thread's cell
/// (lines their owners write at every admit and release: one cache miss per other thread):
/// whether leases are on, the slots this thread keeps (its own cell), and how many *other*
/// threads hold a cell of the host (each keeps at most [`KEEP`]); the generation and the
/// claimed bits are written only when leases turn and cells change hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct View {
    pub(crate) on: bool,
    pub(crate) own: u32,
    pub(crate) others: u32,
}

impl View {
    /// The requests in flight (itself included, at least one) when the word counts
    /// `counted`, from the view and `guess` (the slots the other holders keep, as this thread
    /// last read them: [`others_kept`]), or `None` when only every cell can tell (read them:
    /// [`Leases::kept`]). The exact count lies in `[lo, hi]` (`hi` the word less this
    /// thread's slots, `lo` that less [`KEEP`] per other holder); the answer is `hi` less the
    /// guess, kept in `[lo, hi]` — the exact count when the guess is right, within [`KEEP`]
    /// per other holder whatever it is — and only when no value in `[lo, hi]` can change
    /// what the law reads per sample:
    ///
    /// * leases are on (the word grew to no more than half the limit since they were
    ///   allowed; once revoked the cells are quiet and cheap to read, and slots stranded with
    ///   idle threads are read exactly);
    /// * `hi ≤ half`: the answer and the exact count are both at most half the limit, so
    ///   neither counts as a half-limit sample where the other does not, and such samples
    ///   alone never reach the law's filled share of the limit (¾);
    /// * `low` (the low-concurrency bound) is not in `[lo, hi)`: the answer is a
    ///   low-concurrency sample exactly when the exact count is.
    ///
    /// With no other holder (one thread) the answer is the exact count, and `guess` is not
    /// called.
    #[inline]
    pub(crate) fn estimate(
        self,
        counted: u32,
        low: u32,
        half: u32,
        guess: impl FnOnce() -> u32,
    ) -> Option<u32> {
        let hi = counted.saturating_sub(self.own).max(1);
        if self.others == 0 {
            return Some(hi);
        }
        if !self.on || hi > half {
            return None;
        }
        let lo = hi.saturating_sub(KEEP * self.others).max(1);
        if lo <= low && low < hi {
            return None;
        }
        Some(hi.saturating_sub(guess()).clamp(lo, hi))
    }
}

/// One timed request in this many that a [`View`] answers reads every cell (the census), the
/// others use the slots the other holders kept at this thread's last census. Censuses and the
/// requests they stand for are the same kind of instant (this thread's timed admits), so
/// over a window the guesses err both ways, and the window's mean concurrency keeps close to
/// the exact one; one in eight keeps seven eighths of the cache misses away.
pub(crate) const CENSUS_EVERY: u32 = 8;

/// This thread's last census: of which host, what the other holders kept, and the requests
/// until the next.
#[derive(Clone, Copy)]
struct Census {
    host: usize,
    others_kept: u32,
    countdown: u32,
}

#[cfg(not(degrade_loom))]
thread_local! {
    static CENSUS: Cell<Census> = const {
        Cell::new(Census { host: 0, others_kept: 0, countdown: 0 })
    };
}
#[cfg(degrade_loom)]
loom::thread_local! {
    static CENSUS: Cell<Census> = Cell::new(Census { host: 0, others_kept: 0, countdown: 0 });
}

/// The slots the other holders of `host` keep, as this thread last read them: `read` (every
/// cell less this thread's) runs once every [`CENSUS_EVERY`] calls and whenever the host
/// differs from the last call's.
#[inline]
pub(crate) fn others_kept(host: &'static dyn Host, read: impl FnOnce() -> u32) -> u32 {
    let addr = std::ptr::from_ref(host).cast::<()>() as usize;
    let counted = CENSUS.try_with(|cell| {
        let mut p = cell.get();
        if p.host != addr || p.countdown == 0 {
            p = Census {
                host: addr,
                others_kept: read(),
                countdown: CENSUS_EVERY - 1,
            };
        } else {
            p.countdown -= 1;
        }
        cell.set(p);
        p.others_kept
    });
    counted.unwrap_or(0)
}

/// The view of `host`'s kept slots from this thread (see [`View`]): no other thread's cell
/// is read.
#[inline]
pub(crate) fn view(host: &'static dyn Host) -> View {
    let leases = host.leases();
    let generation = leases.generation.load(Ordering::Relaxed);
    let claimed = leases.claimed.load(Ordering::Relaxed);
    let (own, mine) = LEASE
        .try_with(|holder| {
            let lease = holder.0.get();
            if lease.of(host) {
                let cell = &leases.cells[lease.shard];
                (cell.load(Ordering::Relaxed), 1u32 << lease.shard)
            } else {
                (0, 0)
            }
        })
        .unwrap_or((0, 0));
    View {
        on: on(generation),
        own,
        others: (claimed & !mine).count_ones(),
    }
}

/// A thread's lease: the host, its cell, the generation it was taken in, and the slots this
/// thread gave back to other hosts since it was taken ([`MOVE_AFTER`]).
#[derive(Clone, Copy)]
struct Lease {
    host: Option<&'static dyn Host>,
    shard: usize,
    generation: u32,
    elsewhere: u32,
}

/// A thread whose lease is of one limiter and which gives back this many slots to other
/// limiters that have leases to give (through their words: it cannot keep them) moves its
/// lease to the one it gives back to then: a thread that has moved on to another layer (a worker serving another
/// route) does not leave it on the word path for good. Moving costs a `fetch_sub` (the
/// kept slots go back), a `fetch_and` and a compare-and-swap (the cells change hands); a
/// thread that alternates between two limiters moves once every `MOVE_AFTER` calls of the
/// other, so the moves cost a few locked instructions per `2 × MOVE_AFTER` calls.
#[cfg(not(degrade_loom))]
pub(crate) const MOVE_AFTER: u32 = 64;
/// In the loom models a lease moves at the first slot given elsewhere.
#[cfg(degrade_loom)]
pub(crate) const MOVE_AFTER: u32 = 1;

impl Lease {
    const NONE: Lease = Lease {
        host: None,
        shard: 0,
        generation: 0,
        elsewhere: 0,
    };

    #[inline]
    fn of(&self, host: &'static dyn Host) -> bool {
        self.host.is_some_and(|h| std::ptr::addr_eq(h, host))
    }
}

/// The thread's lease, given back when the thread exits.
struct Holder(Cell<Lease>);

impl Drop for Holder {
    fn drop(&mut self) {
        let lease = self.0.replace(Lease::NONE);
        give_back(lease);
    }
}

#[cfg(not(degrade_loom))]
thread_local! {
    static LEASE: Holder = const { Holder(Cell::new(Lease::NONE)) };
}
#[cfg(degrade_loom)]
loom::thread_local! {
    static LEASE: Holder = Holder(Cell::new(Lease::NONE));
}

/// Gives a lease's kept slots back to its host and frees its cell.
fn give_back(lease: Lease) {
    let Some(host) = lease.host else {
        return;
    };
    let leases = host.leases();
    let cell = &leases.cells[lease.shard];
    let kept = cell.load(Ordering::Relaxed);
    cell.store(0, Ordering::Relaxed);
    // The cell is free once it reads 0 (the next owner's claim acquires this).
    leases
        .claimed
        .fetch_and(!(1 << lease.shard), Ordering::AcqRel);
    if kept > 0 {
        let released = host.in_flight().release_many(kept);
        if released.waiters {
            host.after_release(released);
        }
    }
}

/// The cell of this thread's lease of `host` while the lease is current; once its generation
/// has moved on (revoked), the lease ends (its slots go back) and there is none.
#[inline(always)]
fn current_cell(
    holder: &Holder,
    lease: Lease,
    host: &'static dyn Host,
) -> Option<&'static AtomicU32> {
    let leases = host.leases();
    if leases.generation.load(Ordering::Relaxed) != lease.generation {
        end(holder);
        return None;
    }
    Some(&leases.cells[lease.shard])
}

/// Admits from a slot this thread keeps for `host`: `true` when it did (the slot is the
/// request's now, already counted by the word).
#[inline]
pub(crate) fn take(host: &'static dyn Host) -> bool {
    LEASE
        .try_with(|holder| {
            let lease = holder.0.get();
            if !lease.of(host) {
                return false;
            }
            let Some(cell) = current_cell(holder, lease, host) else {
                return false;
            };
            let kept = cell.load(Ordering::Relaxed);
            if kept == 0 {
                return false;
            }
            cell.store(kept - 1, Ordering::Release);
            true
        })
        .unwrap_or(false)
}

/// Keeps a slot a request of `host` gives back, if this thread may: `true` when it did (the
/// word still counts it).
#[inline]
pub(crate) fn keep(host: &'static dyn Host) -> bool {
    LEASE
        .try_with(|holder| {
            let lease = holder.0.get();
            if !lease.of(host) {
                return claim(holder, host);
            }
            let Some(cell) = current_cell(holder, lease, host) else {
                return false;
            };
            let kept = cell.load(Ordering::Relaxed);
            if kept >= host.leases().keep.load(Ordering::Relaxed) {
                return false;
            }
            cell.store(kept + 1, Ordering::Release);
            true
        })
        .unwrap_or(false)
}

/// The thread's lease ended (revoked): its slots go back.
#[cold]
#[inline(never)]
fn end(holder: &Holder) {
    give_back(holder.0.replace(Lease::NONE));
}

/// This thread holds no current lease of `host`: ends a lease of another host that was
/// revoked (or that this thread has given [`MOVE_AFTER`] slots elsewhere since it took it),
/// then takes one of `host` with the slot being released, if leases are on and a cell is free.
#[cold]
#[inline(never)]
fn claim(holder: &Holder, host: &'static dyn Host) -> bool {
    let leases = host.leases();
    let generation = leases.generation.load(Ordering::Acquire);
    let mut claimed = leases.claimed.load(Ordering::Relaxed);
    let open = on(generation)
        && leases.keep.load(Ordering::Relaxed) > 0
        && ((!claimed).trailing_zeros() as usize) < SHARDS;
    let mut held = holder.0.get();
    if let Some(other) = held.host {
        if other.leases().generation.load(Ordering::Relaxed) == held.generation {
            // A lease of another limiter, still current: keep it, unless this thread now
            // serves `host` rather than it (and `host` has a lease to give).
            if !open {
                return false;
            }
            held.elsewhere += 1;
            if held.elsewhere < MOVE_AFTER {
                holder.0.set(held);
                return false;
            }
        }
        end(holder);
    }
    if !open {
        return false;
    }
    let shard = loop {
        let free = (!claimed).trailing_zeros() as usize;
        if free >= SHARDS {
            return false;
        }
        match leases.claimed.compare_exchange_weak(
            claimed,
            claimed | (1 << free),
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => break free,
            Err(actual) => claimed = actual,
        }
    };
    leases.cells[shard].store(1, Ordering::Release);
    holder.0.set(Lease {
        host: Some(host),
        shard,
        generation,
        elsewhere: 0,
    });
    true
}

#[cfg(all(test, not(degrade_loom)))]
mod tests {
    use super::{KEEP, SHARDS, View};

    /// Every (slots in flight, this thread's kept slots, the others' kept slots, holders,
    /// limit, guess of the others' slots): the view's answer is within [`KEEP`] per other
    /// holder of the exact count (the exact count when the guess is right), has the same
    /// low-concurrency and half-limit verdicts, never reaches the filled share of the limit,
    /// and is exact with no other holder.
    #[test]
    fn the_view_is_within_keep_per_other_holder_with_the_same_verdicts() {
        let mut answered = 0u64;
        for limit in [16u32, 17, 24, 31, 32, 33, 48, 64, 100, 256] {
            let (low, half) = ((limit / 8).max(1), limit / 2);
            for others in 0..=SHARDS as u32 {
                for others_kept in 0..=KEEP * others {
                    for guess in 0..=KEEP * others + 1 {
                        for own in 0..=KEEP {
                            for in_flight in 0..=limit {
                                for on in [true, false] {
                                    let counted = in_flight + own + others_kept;
                                    let exact = in_flight.max(1);
                                    let view = View { on, own, others };
                                    let Some(n) = view.estimate(counted, low, half, || guess)
                                    else {
                                        assert!(others > 0);
                                        continue;
                                    };
                                    answered += 1;
                                    let at = format!("{view:?} {counted} {guess}");
                                    assert!(n.abs_diff(exact) <= KEEP * others, "{at}");
                                    assert_eq!(n <= low, exact <= low, "{at}");
                                    assert_eq!(n <= half, exact <= half, "{at}");
                                    if others == 0 || guess == others_kept {
                                        assert_eq!(n, exact, "{at}");
                                    } else {
                                        assert!(on && f64::from(n) < 0.75 * f64::from(limit));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(answered > 0);
    }
}

#[cfg(all(test, degrade_loom))]
mod loom_models {
    //! `RUSTFLAGS="--cfg degrade_loom" cargo test -p degrade-core --release --lib loom_models`
    use super::{Host, KEEP, LEASE, Leases, end, keep, take};
    use crate::limit::inflight::{InFlight, Released};
    use crate::sync::{AtomicU32, Ordering};
    use loom::sync::Mutex;
    use loom::thread;

    /// A host with a one-lane queue: how many wait, and how many were granted a slot.
    struct TestHost {
        word: InFlight,
        leases: Leases,
        queue: Mutex<(u32, u32)>,
        limit: u32,
        /// Requests holding a slot (granted or admitted), counted by the model.
        holding: AtomicU32,
    }

    impl TestHost {
        /// A host admitting up to `limit`, whose threads may keep [`KEEP`] slots each.
        fn leak(limit: u32) -> &'static TestHost {
            let host = Box::leak(Box::new(TestHost {
                word: InFlight::new(),
                leases: Leases::default(),
                queue: Mutex::new((0, 0)),
                limit,
                holding: AtomicU32::new(0),
            }));
            host.leases.keep.store(KEEP, Ordering::Relaxed);
            host
        }

        /// The slots this thread keeps of the host.
        fn own(&'static self) -> u32 {
            LEASE.with(|holder| {
                let lease = holder.0.get();
                if lease.of(self) {
                    self.leases.cells[lease.shard].load(Ordering::Relaxed)
                } else {
                    0
                }
            })
        }

        /// The limiter's admit: a kept slot, or the word.
        fn admit(&'static self) -> bool {
            let ok = take(self) || {
                let n = self.word.try_acquire(self.limit);
                if let Some(n) = n {
                    self.leases.adjust(n, self.limit, || true);
                }
                n.is_some()
            };
            if ok {
                let before = self.holding.fetch_add(1, Ordering::SeqCst);
                assert!(before < self.limit, "more than the limit in flight");
            }
            ok
        }

        /// The limiter's release.
        fn release(&'static self) {
            self.holding.fetch_sub(1, Ordering::SeqCst);
            if !keep(self) {
                let released = self.word.release();
                if released.waiters {
                    self.after_release(released);
                }
            }
        }

        /// The overload path: revoke the leases, queue, and try the word.
        fn wait(&'static self) {
            self.leases.revoke();
            let mut q = self.queue.lock().unwrap();
            q.0 += 1;
            self.word.add_waiter();
            self.drain(&mut q);
        }

        fn drain(&self, q: &mut (u32, u32)) {
            while q.0 > 0 {
                if self.word.try_acquire_ahead(self.limit).is_none() {
                    break;
                }
                let before = self.holding.fetch_add(1, Ordering::SeqCst);
                assert!(before < self.limit, "more than the limit in flight");
                q.0 -= 1;
                q.1 += 1;
                self.word.remove_waiter();
            }
        }
    }

    /// What the thread's exit does (loom lets `join` return before a thread's locals drop).
    fn exit() {
        LEASE.with(end);
    }

    impl Host for TestHost {
        fn in_flight(&self) -> &InFlight {
            &self.word
        }
        fn leases(&self) -> &Leases {
            &self.leases
        }
        fn after_release(&'static self, released: Released) {
            if released.waiters {
                let mut q = self.queue.lock().unwrap();
                self.drain(&mut q);
            }
        }
    }

    /// A thread keeps the slot its request gives back while another admits through the word
    /// (a limit of 3, under 16: the leases stay on while the word fills): never more than the
    /// limit in flight, and once the keeper is gone every slot is back; the other thread's
    /// kept slot is not in flight.
    #[test]
    fn kept_slots_never_exceed_the_limit_and_come_back() {
        loom::model(|| {
            let host = TestHost::leak(3);
            let t = thread::spawn(move || {
                for _ in 0..2 {
                    if host.admit() {
                        host.release();
                    }
                }
                exit();
            });
            if host.admit() {
                host.release();
            }
            t.join().unwrap();
            assert_eq!(host.holding.load(Ordering::SeqCst), 0);
            let (counted, waiting) = host.word.load();
            assert_eq!(waiting, 0);
            assert_eq!(counted, host.leases.kept(), "no slot lost or made");
            assert_eq!(host.leases.in_flight(&host.word), (0, 0));
        });
    }

    /// A thread keeps the slot its request gives back while the other fills the limit and
    /// waits (revoking the leases): the waiter gets the slot, from the release or from the
    /// keeper giving its kept slot back when it leaves, and no slot is lost or made.
    #[test]
    fn a_kept_slot_reaches_a_waiter() {
        loom::model(|| {
            let host = TestHost::leak(3);
            let t = thread::spawn(move || {
                if host.admit() {
                    host.release(); // kept if the leases are still on when it looks
                }
                exit();
            });
            let mut held = 0;
            for _ in 0..3 {
                if host.admit() {
                    held += 1;
                }
            }
            if held < 3 {
                host.wait();
            }
            t.join().unwrap();
            let granted = {
                let q = host.queue.lock().unwrap();
                assert_eq!(q.0, 0, "no waiter left behind");
                q.1
            };
            assert_eq!(held + granted, 3, "the waiter was served");
            for _ in 0..held + granted {
                host.release(); // kept by this thread while the leases are on (nobody waited)
            }
            exit();
            assert_eq!(host.holding.load(Ordering::SeqCst), 0);
            assert_eq!(host.word.load(), (0, 0), "every slot is back in the word");
        });
    }

    /// The limit shrinks from 32 to 16 (a thread may keep one slot instead of two, and the
    /// leases are revoked) while a thread's requests, two at a time, give their slots back:
    /// it keeps at most two, at most one once it has seen the smaller limit (its next two
    /// requests end its lease and start one under 16), never more than the limit is in
    /// flight, and every slot is back once it leaves.
    #[test]
    fn a_smaller_limit_lowers_what_a_thread_keeps() {
        use loom::sync::atomic::AtomicBool;
        loom::model(|| {
            let host = TestHost::leak(32);
            host.leases.limit(32, 0);
            let shrunk: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
            let t = thread::spawn(move || {
                let (a, b) = (host.admit(), host.admit());
                for admitted in [a, b] {
                    if admitted {
                        host.release();
                    }
                }
                assert!(host.own() <= KEEP);
                let seen = shrunk.load(Ordering::SeqCst);
                let (a, b) = (host.admit(), host.admit());
                for admitted in [a, b] {
                    if admitted {
                        host.release();
                    }
                }
                if seen {
                    assert!(host.own() <= 1, "kept {} under 16", host.own());
                }
                exit();
            });
            host.leases.limit(16, 32);
            shrunk.store(true, Ordering::SeqCst);
            t.join().unwrap();
            assert_eq!(host.holding.load(Ordering::SeqCst), 0);
            assert_eq!(host.word.load(), (0, 0), "every slot is back in the word");
        });
    }
    /// A thread moves its lease from `a` (where it keeps the slot its request gave back) to
    /// `b`, while the other fills `a` and waits (revoking `a`'s leases): the waiter gets a
    /// slot, from the release or from the move giving the kept one back, no slot is lost or
    /// made, and `b`'s slot is kept by the mover until it leaves.
    #[test]
    fn a_moved_lease_gives_its_kept_slots_back() {
        loom::model(|| {
            let (a, b) = (TestHost::leak(2), TestHost::leak(2));
            let t = thread::spawn(move || {
                if a.admit() {
                    a.release(); // kept if the leases are still on when it looks
                }
                if b.admit() {
                    b.release(); // the lease moves to `b` if `b`'s are on
                }
                assert_eq!(a.own(), 0, "nothing of `a` kept once the thread serves `b`");
                exit();
            });
            let mut held = 0;
            for _ in 0..2 {
                if a.admit() {
                    held += 1;
                }
            }
            if held < 2 {
                a.wait();
            }
            t.join().unwrap();
            let granted = {
                let q = a.queue.lock().unwrap();
                assert_eq!(q.0, 0, "no waiter left behind");
                q.1
            };
            assert_eq!(held + granted, 2, "the waiter was served");
            for _ in 0..held + granted {
                a.release();
            }
            exit();
            assert_eq!(a.word.load(), (0, 0), "every slot of `a` is back");
            assert_eq!(b.word.load(), (0, 0), "every slot of `b` is back");
        });
    }
}
