//! What counting requests in flight costs on this machine, without any layer around it: the
//! floor under the `admit` member of `min_of_reps`, for issue 16's "+15 ns" criterion and
//! issue 20's "two threads ≥ 1.5× one thread".
//!
//! Each member takes and gives back one slot per call (an admit and its release, one request
//! in flight per thread), and prints the fastest of 40 repetitions of 2,000,000 calls, per
//! call, with one thread and with two threads sharing one counter (wall time per call over
//! both threads: the second figure is half the first when two threads scale perfectly).
//!
//! * `shared`: the `DegradeLayer`'s accounting today (`degrade_core::limit`'s in-flight
//!   word): a compare-and-swap against the limit to admit, a `fetch_sub` to release, on one
//!   word every thread writes.
//! * `sharded-rmw`: the same two locked instructions, each thread on its own cache line (no
//!   limit enforced): what sharding alone buys, i.e. nothing on one thread.
//! * `lease`: per-thread leases of slots, as `degrade_core::limit` has them: a thread keeps up
//!   to two slots its requests gave back and admits from them, with a plain load and store on
//!   its own cache line after checking, with one load of a line nobody writes, that leases are
//!   not revoked; without a kept slot it takes the shared word's path. The thread's lease is
//!   found in a thread-local table keyed by the counter.
//! * `lease-fenced`: `lease` with a sequentially consistent fence after each slot kept: what a
//!   release would cost if it had to be ordered before a second read of the revocation (so that
//!   a waiter that revokes the leases could never wait for a slot kept in a race).
//!
//! ```text
//! cargo run --release -p degrade-benches --example inflight_floor [member ...]
//! ```

use std::cell::Cell;
use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::thread;
use std::time::Instant;

const CALLS: u64 = 2_000_000;
const REPETITIONS: u32 = 40;
const LIMIT: u64 = 1_000_000;
/// The most slots a thread keeps.
const KEEP: u32 = 2;
/// Threads that may hold a lease (each on its own line).
const SHARDS: usize = 8;

#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

trait Slots: Sync {
    fn admit(&self) -> bool;
    fn release(&self);
}

/// One word: requests in flight, under the limit.
#[derive(Default)]
struct Shared {
    word: Padded<AtomicU64>,
}

impl Slots for Shared {
    #[inline]
    fn admit(&self) -> bool {
        let mut current = self.word.0.load(Ordering::Relaxed);
        loop {
            if current >= LIMIT {
                return false;
            }
            match self.word.0.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    #[inline]
    fn release(&self) {
        self.word.0.fetch_sub(1, Ordering::AcqRel);
    }
}

thread_local! {
    /// This thread's shard, assigned on first use.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    /// This thread's leases: (counter's address, shard, generation) — four entries.
    static LEASES: [Cell<(usize, usize, u32)>; 4] = const {
        [const { Cell::new((0, 0, 0)) }; 4]
    };
}

static NEXT_SHARD: AtomicU64 = AtomicU64::new(0);

fn my_shard() -> usize {
    SHARD.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) as usize % SHARDS);
        }
        s.get()
    })
}

/// Per-thread cells written with locked instructions.
#[derive(Default)]
struct ShardedRmw {
    cells: [Padded<AtomicU64>; SHARDS],
}

impl Slots for ShardedRmw {
    #[inline]
    fn admit(&self) -> bool {
        self.cells[my_shard()].0.fetch_add(1, Ordering::AcqRel);
        true
    }

    #[inline]
    fn release(&self) {
        self.cells[my_shard()].0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The shared word (kept slots included), a generation that revokes the leases, and each
/// thread's kept slots on its own line (written by that thread only): the mechanism of
/// `degrade_core::limit`'s leases, without their revocation and give-back paths.
#[derive(Default)]
struct Leases<const FENCED: bool> {
    word: Shared,
    generation: Padded<AtomicU32>,
    kept: [Padded<AtomicU32>; SHARDS],
}

impl<const FENCED: bool> Leases<FENCED> {
    /// This thread's cell of this counter, if its lease is current; `Err` without a lease.
    #[inline]
    fn lease(&self) -> Result<Option<usize>, ()> {
        let me = self as *const Self as usize;
        let generation = self.generation.0.load(Ordering::Relaxed);
        LEASES.with(|table| {
            for entry in table {
                let (owner, shard, g) = entry.get();
                if owner == me {
                    return Ok((g == generation).then_some(shard));
                }
            }
            Err(())
        })
    }

    /// Takes a lease of this counter with the slot being released.
    #[cold]
    #[inline(never)]
    fn claim(&self) {
        let me = self as *const Self as usize;
        let generation = self.generation.0.load(Ordering::Relaxed);
        let shard = my_shard();
        self.kept[shard].0.store(1, Ordering::Release);
        LEASES.with(|table| {
            let slot = table.iter().position(|e| e.get().0 == 0).unwrap_or(0);
            table[slot].set((me, shard, generation));
        });
    }
}

impl<const FENCED: bool> Slots for Leases<FENCED> {
    #[inline]
    fn admit(&self) -> bool {
        if let Ok(Some(shard)) = self.lease() {
            let cell = &self.kept[shard].0;
            let n = cell.load(Ordering::Relaxed);
            if n > 0 {
                cell.store(n - 1, Ordering::Release);
                return true;
            }
        }
        self.word.admit()
    }

    #[inline]
    fn release(&self) {
        match self.lease() {
            Ok(Some(shard)) => {
                let cell = &self.kept[shard].0;
                let n = cell.load(Ordering::Relaxed);
                if n < KEEP {
                    cell.store(n + 1, Ordering::Release);
                    if FENCED {
                        fence(Ordering::SeqCst);
                        black_box(self.generation.0.load(Ordering::Relaxed));
                    }
                    return;
                }
            }
            Err(()) => return self.claim(),
            Ok(None) => {}
        }
        self.word.release();
    }
}

/// Wall time per call of `threads` threads sharing `slots`, the fastest of the repetitions.
fn per_call(slots: &dyn Slots, threads: u64) -> f64 {
    (0..REPETITIONS)
        .map(|_| {
            let ready = Barrier::new(threads as usize + 1);
            let go = Barrier::new(threads as usize + 1);
            thread::scope(|scope| {
                for _ in 0..threads {
                    let (ready, go) = (&ready, &go);
                    scope.spawn(move || {
                        ready.wait();
                        go.wait();
                        for _ in 0..CALLS / threads {
                            if black_box(slots).admit() {
                                black_box(slots).release();
                            }
                        }
                    });
                }
                ready.wait();
                let start = Instant::now();
                go.wait();
                start
            })
            .elapsed()
            .as_secs_f64()
                * 1e9
                / CALLS as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let on = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let members: [(&str, Box<dyn Slots>); 4] = [
        ("shared", Box::<Shared>::default()),
        ("sharded-rmw", Box::<ShardedRmw>::default()),
        ("lease", Box::<Leases<false>>::default()),
        ("lease-fenced", Box::<Leases<true>>::default()),
    ];
    for (name, slots) in &members {
        if !on(name) {
            continue;
        }
        let one = per_call(slots.as_ref(), 1);
        let two = per_call(slots.as_ref(), 2);
        println!(
            "{name:<14} 1 thread {one:>7.2} ns   2 threads {two:>7.2} ns   gain {:>4.2}x",
            one / two
        );
    }
}
