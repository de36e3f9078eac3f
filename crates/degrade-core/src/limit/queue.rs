//! The wait queue in front of the limit: bounded, highest priority first, pure.
//!
//! A request that finds the limit full may wait here. How long is CoDel's question, asked the
//! way Facebook's RPC queues ask it ("Fail at Scale"): does the queue *stand* — has it held
//! waiters without emptying for an interval, or refused one lately ([`WaitQueue::stands`])?
//! While it stands, a waiter is refused once it has waited past its target; while it does
//! not, the waiters are a burst passing through, and one past its target may wait on until
//! the queue has stood the interval. Either way no wait outlasts the interval
//! ([`Patience`]).
//!
//! A freed slot goes to the best waiter: the highest priority, and within a priority the
//! oldest — or, once the queue has held waiters for a whole target, the newest:
//! under a standing queue the oldest waiters are the ones about to miss their target anyway,
//! and serving the newest keeps the admitted latency low (adaptive LIFO, as in Facebook's
//! CoDel-managed RPC queues). Critical waiters go newest first only when they alone wait and
//! their oldest is past the target (see [`WaitQueue::grant`]). A full queue makes room for a higher priority by evicting the
//! newest waiter of the lowest priority below it; and for a critical request, when it holds
//! nothing but critical waiters, by refusing the oldest of them (drop-front, see
//! [`WaitQueue::push`]).
//!
//! The queue's memory grows with the most waiters it ever held, up to its capacity, and never
//! beyond: it allocates only while a burst is bigger than every earlier one. The
//! [`Limiter`](super::Limiter) holds it under a mutex: only requests that find the limit full
//! (or waiters present) ever take that lock.

use crate::priority::Priority;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// The interval after which a queue that has not emptied stands, in queueing-delay targets.
///
/// One target is too short: a waiter past its target has kept the queue busy that long by
/// itself, so every late waiter of a Poisson burst at the knee found the queue standing (at
/// 0.5x on 8 slots x 40 ms, one request in 4 000-15 000 was refused after waiting its 20 ms
/// with the queue nearly empty). With two, such a waiter may wait on for at most one more
/// target (rare, and bounded), while a queue that outlasts the interval is judged as before.
pub(crate) const STANDING: u32 = 2;

/// How long a queue that refused a waiter keeps standing though it emptied meanwhile, in
/// intervals: CoDel's memory of its dropping state (CoDel resumes dropping at its last rate
/// when it re-enters the state within 16 intervals). Under overload a small queue empties
/// often — on 2 slots x 200 ms at 1.5x, between most two arrivals — and without the memory
/// each waiter would be a burst of its own, let wait the whole interval (the sim's admitted
/// p99 over seeds 1-30 rose from 1.04 to 1.16 of the unloaded p99 there; 1.07 with 8).
pub(crate) const MEMORY: u32 = 16;

/// How long a waiter may wait: its target (`wait`) once the queue stands, and until the
/// queue has stood `interval` otherwise (see [`WaitQueue::stands`]). No wait outlasts
/// `max(wait, interval)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Patience {
    /// The queueing-delay target of the waiter's priority.
    pub(crate) wait: Duration,
    /// How long the queue must hold waiters without emptying to stand.
    pub(crate) interval: Duration,
}

impl Patience {
    /// The patience of a waiter of `priority` under a queueing-delay `target`: the target,
    /// twice it for a critical waiter (critical waiters are served before any other, so they
    /// wait that long only when critical requests alone fill the limit); the queue stands
    /// after [`STANDING`] targets, whatever the priority (so a critical waiter, whose
    /// allowance is that long already, waits as long as it always did).
    #[cfg(test)]
    pub(crate) fn new(target: Duration, priority: Priority) -> Self {
        Self::waits(target, target.saturating_mul(2), priority)
    }

    /// The patience of a waiter of `priority` under a queueing-delay `target`: the target,
    /// or `critical` for a critical waiter (the law's [`max_wait`](super::Law::max_wait), at
    /// least the target); the queue stands after [`STANDING`] targets, whatever the priority.
    pub(crate) fn waits(target: Duration, critical: Duration, priority: Priority) -> Self {
        let wait = if priority == Priority::Critical {
            critical.max(target)
        } else {
            target
        };
        Self {
            wait,
            interval: target.saturating_mul(STANDING),
        }
    }

    /// The patience of a waiter of `priority` while the priorities whose bits are set in
    /// `pressured` (bit `1 << index`) had requests refused lately, and `alone` when only
    /// critical requests wait, two or more ([`WaitQueue::critical_crowd`]): as
    /// [`Patience::waits`], but a critical waiter waits only the target while critical
    /// requests are refused and crowd the queue alone. They are then more than the
    /// limit serves (the limit holds critical requests only: the others would be waiting
    /// too), the queue holds more of them than the free slots take, and a longer wait only
    /// adds to the latency of those served (the overload bench's `critical-only` at 1.5x: p99
    /// 1.55-1.59x the unloaded with twice the target, 1.30-1.32x with the target). While none
    /// is refused, or others wait beside them, the longer allowance carries them through a
    /// transient (an onset, a cut, a slow slot on a small backend) without a refusal: the
    /// target alone there doubled the critical requests refused on 2 cores in the simulator.
    /// One critical waiter alone is no crowd: on a small backend the others are refused at
    /// their shares and a single critical request often waits alone; read as a crowd after one
    /// refusal, the target refused the next ones in turn (the simulator's `capacity-halves`
    /// on 2 cores x 20 ms over seeds 1-20: 25 critical requests refused, 15 with the crowd
    /// at two; at a cold start over gRPC, four critical calls at once after one refusal).
    pub(crate) fn under(
        target: Duration,
        critical: Duration,
        priority: Priority,
        pressured: u8,
        alone: bool,
    ) -> Self {
        let patience = Self::waits(target, critical, priority);
        let critical = priority == Priority::Critical;
        if critical && alone && pressured & (1 << Priority::Critical.index()) != 0 {
            Self {
                wait: target,
                ..patience
            }
        } else {
            patience
        }
    }
}

/// One waiter's place: its index and the generation of the slot, so a stale ticket (kept by a
/// future after its slot was reused) is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    index: u32,
    generation: u32,
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// A slot of the limit was handed to the waiter: it is now in flight.
    Granted,
    /// It waited past the target.
    Expired,
    /// A higher priority took its place in a full queue.
    Evicted,
}

#[derive(Debug)]
enum State<T> {
    Free,
    Waiting {
        priority: Priority,
        since: Instant,
        payload: T,
    },
    Done(Fate),
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    state: State<T>,
}

/// What [`WaitQueue::push`] did.
#[derive(Debug)]
pub(crate) enum Pushed<T> {
    /// Waiting; a lower-priority waiter may have been evicted to make room (its payload is
    /// handed back so it can be woken, with its priority).
    Queued {
        ticket: Ticket,
        evicted: Option<(Ticket, T, Priority)>,
    },
    /// The queue is full of requests at least as important: refused, payload handed back.
    Full(T),
}

/// A bounded priority queue of waiters carrying a payload `T` (a waker in the limiter, a
/// request id in the simulator).
#[derive(Debug)]
pub(crate) struct WaitQueue<T> {
    capacity: usize,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    /// Waiting tickets per priority, oldest first.
    lanes: [VecDeque<Ticket>; 5],
    waiting: usize,
    /// When the queue last went from empty to non-empty (`None` while empty).
    busy_since: Option<Instant>,
    /// When it last refused a waiter past its target.
    expired_at: Option<Instant>,
}

impl<T> WaitQueue<T> {
    /// A queue of at most `capacity` slots (waiters, and decided waiters whose futures have
    /// not read their fate yet).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.min(u32::MAX as usize),
            slots: Vec::new(),
            free: Vec::new(),
            lanes: Default::default(),
            waiting: 0,
            busy_since: None,
            expired_at: None,
        }
    }

    /// Requests waiting now.
    pub(crate) fn len(&self) -> usize {
        self.waiting
    }

    /// The longest time the queue has held waiters without emptying.
    pub(crate) fn standing_for(&self, now: Instant) -> Duration {
        self.busy_since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// Whether the queue stands under `patience`: it has held waiters without emptying for
    /// the interval, or it refused a waiter past its target within the last [`MEMORY`]
    /// intervals.
    pub(crate) fn stands(&self, now: Instant, patience: Patience) -> bool {
        self.standing_for(now) >= patience.interval
            || self.expired_at.is_some_and(|at| {
                now.saturating_duration_since(at) < patience.interval.saturating_mul(MEMORY)
            })
    }

    /// The latest a waiter queued at `since` (while the queue holds it) is refused under
    /// `patience`: its target after `since`, or the moment the queue has stood the interval,
    /// whichever is later (the queue cannot empty while the waiter is in it, so this is fixed
    /// for the whole wait), and never later than `since + max(wait, interval)`. It is refused
    /// at its target already if the queue stands by then (see [`stands`](Self::stands)).
    pub(crate) fn deadline(&self, since: Instant, patience: Patience) -> Instant {
        let stands = self.busy_since.unwrap_or(since).min(since) + patience.interval;
        (since + patience.wait).max(stands)
    }

    /// Queues a waiter of `priority`, keeping at most `bound` waiters (and never more than
    /// the capacity).
    ///
    /// A full queue evicts the newest waiter of the lowest priority below `priority`; a full
    /// queue of critical waiters takes a critical newcomer by evicting its *oldest* critical
    /// waiter (drop-front). One critical request is refused either way, but the one that
    /// waited longest is the nearest to its deadline and has cost its caller the most time
    /// already; refusing the newcomer instead kept the oldest ones, so every critical request
    /// served from a full queue had waited about as long as the queue takes to drain — a whole
    /// service time when callers re-send at once and critical requests alone fill it (a closed
    /// loop, where the requests re-sent after refusals end up critical: 64 connections on 8
    /// slots × 40 ms, admitted p99 120 ms, 80 ms with drop-front). Below critical, a full
    /// queue still refuses the newcomer: drop-front for every priority lost goodput on
    /// open-loop overload (8 slots × 40 ms, log-normal 0.5: 85.2 → 78.9 % worst of six seeds).
    pub(crate) fn push(
        &mut self,
        priority: Priority,
        now: Instant,
        bound: usize,
        payload: T,
    ) -> Pushed<T> {
        // A slot stays owned by its future until the future reads its fate, so the slots can
        // run out before the bound does: then nothing can be queued.
        if self.free.is_empty() {
            if self.slots.len() >= self.capacity {
                return Pushed::Full(payload);
            }
            self.free.push(self.slots.len() as u32);
            self.slots.push(Slot {
                generation: 0,
                state: State::Free,
            });
        }
        let mut evicted = None;
        if self.waiting >= bound.min(self.capacity) {
            // Make room by evicting the newest waiter of the lowest priority below ours, or for
            // a critical request among critical ones only, the oldest of them.
            let victim = match (0..priority.index()).find(|&p| !self.lanes[p].is_empty()) {
                Some(lane) => self.lanes[lane]
                    .pop_back()
                    .map(|t| (t, Priority::ALL[lane])),
                None if priority == Priority::Critical => self.lanes[Priority::Critical.index()]
                    .pop_front()
                    .map(|t| (t, Priority::Critical)),
                None => None,
            };
            let Some((victim, victim_priority)) = victim else {
                return Pushed::Full(payload);
            };
            self.waiting -= 1;
            let slot = &mut self.slots[victim.index as usize];
            if let State::Waiting { payload, .. } =
                std::mem::replace(&mut slot.state, State::Done(Fate::Evicted))
            {
                evicted = Some((victim, payload, victim_priority));
            }
        }
        let Some(index) = self.free.pop() else {
            return Pushed::Full(payload);
        };
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.state = State::Waiting {
            priority,
            since: now,
            payload,
        };
        let ticket = Ticket {
            index,
            generation: slot.generation,
        };
        self.lanes[priority.index()].push_back(ticket);
        if self.waiting == 0 {
            self.busy_since = Some(now);
        }
        self.waiting += 1;
        Pushed::Queued { ticket, evicted }
    }

    /// When the oldest waiter of `priority` queued, if any waits.
    pub(crate) fn oldest_since(&self, priority: Priority) -> Option<Instant> {
        let ticket = self.lanes[priority.index()].front()?;
        match &self.slots[ticket.index as usize].state {
            State::Waiting { since, .. } => Some(*since),
            _ => None,
        }
    }

    /// Whether every request waiting (if any) is of `priority`.
    pub(crate) fn only(&self, priority: Priority) -> bool {
        self.lanes[priority.index()].len() == self.waiting
    }

    /// Only critical requests wait, at least two of them once `coming` more join: critical
    /// requests alone fill the limit (see [`Patience::under`]).
    pub(crate) fn critical_crowd(&self, coming: usize) -> bool {
        self.only(Priority::Critical) && self.lanes[Priority::Critical.index()].len() + coming >= 2
    }

    /// The priority of the best waiter, if any.
    pub(crate) fn best_priority(&self) -> Option<Priority> {
        (0..5)
            .rev()
            .find(|&p| !self.lanes[p].is_empty())
            .map(|p| Priority::ALL[p])
    }

    /// Hands a slot to the best waiter: the highest priority; the oldest of it, or, under a
    /// standing queue (`standing`: `Some` of the queueing-delay target), the newest. Critical
    /// waiters go newest first only when their own oldest has waited past the target: while
    /// other priorities keep the queue standing, the few critical waiters are each served in
    /// turn (newest first there refused critical requests that waited behind newer ones: the
    /// simulator's mixed-priority overload, 8 slots x 40 ms log-normal 0.5, 7 -> 67 of 41 495
    /// critical requests refused over seeds 61-120); when critical requests alone fill the
    /// limit and queue past their target, serving the newest keeps their admitted latency near
    /// the service's (the overload bench's `critical-only`: p50 71 ms on a 41 ms service while
    /// they were served oldest first). Returns its ticket, its payload and how long it waited.
    pub(crate) fn grant(
        &mut self,
        now: Instant,
        standing: Option<Duration>,
    ) -> Option<(Ticket, T, Duration)> {
        let (index, lane) = self
            .lanes
            .iter_mut()
            .enumerate()
            .rev()
            .find(|(_, l)| !l.is_empty())?;
        let only = lane.len() == self.waiting;
        let newest_first = standing.is_some_and(|target| {
            index != Priority::Critical.index()
                || only && lane.front().is_some_and(|t| {
                    matches!(&self.slots[t.index as usize].state,
                        State::Waiting { since, .. } if now.saturating_duration_since(*since) > target)
                })
        });
        let ticket = if newest_first {
            lane.pop_back()
        } else {
            lane.pop_front()
        }?;
        self.waiting -= 1;
        if self.waiting == 0 {
            self.busy_since = None;
        }
        let slot = &mut self.slots[ticket.index as usize];
        match std::mem::replace(&mut slot.state, State::Done(Fate::Granted)) {
            State::Waiting { since, payload, .. } => {
                Some((ticket, payload, now.saturating_duration_since(since)))
            }
            other => {
                slot.state = other;
                None
            }
        }
    }

    /// Ends the wait of every waiter past its target while the queue stands under `patience`
    /// (so of every waiter past its [`deadline`](Self::deadline), and of none before its
    /// target), calling `f` with each one's ticket and payload.
    #[cfg(test)]
    pub(crate) fn expire(&mut self, now: Instant, patience: Patience, f: impl FnMut(Ticket, T)) {
        self.expire_lanes(0..5, now, patience, f);
    }

    /// [`expire`](Self::expire) for the waiters of the priorities in `priorities` (indices):
    /// nothing while the queue does not stand (see [`stands`](Self::stands)), then every
    /// waiter that has waited `patience.wait` or longer.
    pub(crate) fn expire_lanes(
        &mut self,
        priorities: std::ops::Range<usize>,
        now: Instant,
        patience: Patience,
        mut f: impl FnMut(Ticket, T),
    ) {
        if !self.stands(now, patience) {
            return;
        }
        for lane in &mut self.lanes[priorities] {
            // Waiters enter each lane in time order; LIFO grants take from the back, so the
            // front is always the oldest.
            while let Some(&ticket) = lane.front() {
                let slot = &mut self.slots[ticket.index as usize];
                let State::Waiting { since, .. } = &slot.state else {
                    lane.pop_front();
                    continue;
                };
                if now.saturating_duration_since(*since) < patience.wait {
                    break;
                }
                lane.pop_front();
                self.waiting -= 1;
                self.expired_at = Some(now);
                if let State::Waiting { payload, .. } =
                    std::mem::replace(&mut slot.state, State::Done(Fate::Expired))
                {
                    f(ticket, payload);
                }
            }
        }
        if self.waiting == 0 {
            self.busy_since = None;
        }
    }

    /// The payload of a waiting ticket, to update it (a new waker).
    pub(crate) fn payload_mut(&mut self, ticket: Ticket) -> Option<&mut T> {
        let slot = self.slots.get_mut(ticket.index as usize)?;
        match &mut slot.state {
            State::Waiting { payload, .. } if slot.generation == ticket.generation => Some(payload),
            _ => None,
        }
    }

    /// Reads the fate of `ticket`: `None` while it waits. Once decided, the slot is freed and
    /// the ticket becomes stale.
    pub(crate) fn take(&mut self, ticket: Ticket) -> Option<Fate> {
        let slot = self.slots.get_mut(ticket.index as usize)?;
        if slot.generation != ticket.generation {
            return None;
        }
        match slot.state {
            State::Done(fate) => {
                slot.state = State::Free;
                self.free.push(ticket.index);
                Some(fate)
            }
            _ => None,
        }
    }

    /// Withdraws `ticket` (its future was dropped or its timer fired): a waiter leaves the
    /// queue and `None` is returned; a decided ticket returns its fate, so a slot granted to a
    /// future that will never run can be released. The slot is freed either way.
    pub(crate) fn cancel(&mut self, ticket: Ticket) -> Option<Fate> {
        let slot = self.slots.get_mut(ticket.index as usize)?;
        if slot.generation != ticket.generation {
            return None;
        }
        let fate = match &slot.state {
            State::Free => return None,
            State::Waiting { priority, .. } => {
                let lane = &mut self.lanes[priority.index()];
                if let Some(pos) = lane.iter().position(|t| *t == ticket) {
                    lane.remove(pos);
                }
                self.waiting -= 1;
                if self.waiting == 0 {
                    self.busy_since = None;
                }
                None
            }
            State::Done(fate) => Some(*fate),
        };
        slot.state = State::Free;
        self.free.push(ticket.index);
        fate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn queued<T>(p: Pushed<T>) -> Ticket {
        match p {
            Pushed::Queued { ticket, .. } => ticket,
            Pushed::Full(_) => panic!("refused"),
        }
    }

    #[test]
    fn grants_go_to_the_highest_priority_then_the_oldest() {
        let now = Instant::now();
        let mut q = WaitQueue::new(8);
        queued(q.push(Priority::Low, now, 8, 1));
        queued(q.push(Priority::High, now, 8, 2));
        queued(q.push(Priority::High, now, 8, 3));
        queued(q.push(Priority::Normal, now, 8, 4));
        let order: Vec<u32> =
            std::iter::from_fn(|| q.grant(now, None).map(|(_, p, _)| p)).collect();
        assert_eq!(order, [2, 3, 4, 1]);
        assert_eq!(q.len(), 0);
    }

    /// Critical waiters go newest first only when they alone wait and their oldest is past the
    /// target: critical requests alone are more than the limit serves, and the oldest would
    /// reach the service late anyway. While other priorities wait too (they keep the queue
    /// standing), or while the oldest is within its target, critical waiters are served in
    /// turn.
    /// A critical waiter has its longer wait (here twice the target) unless critical requests
    /// are being refused and wait alone: then they are more than the limit serves, and the
    /// target bounds the latency of those it serves.
    #[test]
    fn critical_waiters_wait_the_target_only_when_refused_and_alone() {
        let critical = 1 << Priority::Critical.index();
        let normal = 1 << Priority::Normal.index();
        let wait = |priority, pressured, alone| {
            Patience::under(TARGET, TARGET * 2, priority, pressured, alone).wait
        };
        assert_eq!(wait(Priority::Critical, critical, true), TARGET);
        assert_eq!(wait(Priority::Critical, critical | normal, true), TARGET);
        assert_eq!(wait(Priority::Critical, critical, false), TARGET * 2);
        assert_eq!(wait(Priority::Critical, normal, true), TARGET * 2);
        assert_eq!(wait(Priority::Critical, 0, true), TARGET * 2);
        assert_eq!(wait(Priority::Normal, critical | normal, true), TARGET);
        let mut q = WaitQueue::new(8);
        assert!(q.only(Priority::Critical));
        queued(q.push(Priority::Critical, Instant::now(), 8, 1));
        assert!(q.only(Priority::Critical));
        queued(q.push(Priority::Low, Instant::now(), 8, 2));
        assert!(!q.only(Priority::Critical));
    }

    #[test]
    fn critical_waiters_go_newest_first_only_when_they_alone_stand_past_the_target() {
        let t0 = Instant::now();
        let target = Duration::from_millis(10);
        let late = t0 + Duration::from_millis(11);
        let critical = |q: &mut WaitQueue<u32>, at: Instant, p: u32| {
            queued(q.push(Priority::Critical, at, 8, p))
        };
        // Alone and past the target: the newest.
        let mut q = WaitQueue::new(8);
        critical(&mut q, t0, 1);
        critical(&mut q, t0 + Duration::from_millis(5), 2);
        critical(&mut q, late, 3);
        assert_eq!(q.grant(late, Some(target)).map(|(_, p, _)| p), Some(3));
        // Alone, the oldest within the target: in turn.
        let mut q = WaitQueue::new(8);
        critical(&mut q, t0, 1);
        critical(&mut q, t0 + Duration::from_millis(5), 2);
        let soon = t0 + Duration::from_millis(9);
        assert_eq!(q.grant(soon, Some(target)).map(|(_, p, _)| p), Some(1));
        // Past the target, but a normal request waits too: in turn.
        let mut q = WaitQueue::new(8);
        critical(&mut q, t0, 1);
        queued(q.push(Priority::Normal, t0, 8, 9));
        critical(&mut q, late, 3);
        let order: Vec<u32> =
            std::iter::from_fn(|| q.grant(late, Some(target)).map(|(_, p, _)| p)).collect();
        assert_eq!(order, [1, 3, 9]);
        // Not standing: in turn, however long they waited.
        let mut q = WaitQueue::new(8);
        critical(&mut q, t0, 1);
        critical(&mut q, late, 3);
        assert_eq!(q.grant(late, None).map(|(_, p, _)| p), Some(1));
    }

    #[test]
    fn a_standing_queue_serves_the_newest_first() {
        let now = Instant::now();
        let mut q = WaitQueue::new(8);
        for i in 0..3 {
            queued(q.push(Priority::Normal, now, 8, i));
        }
        assert_eq!(
            q.grant(now, Some(Duration::ZERO)).map(|(_, p, _)| p),
            Some(2)
        );
    }

    #[test]
    fn a_full_queue_evicts_the_newest_of_the_lowest_priority_for_a_higher_one() {
        let now = Instant::now();
        let mut q = WaitQueue::new(8);
        let a = queued(q.push(Priority::Low, now, 2, 1));
        let b = queued(q.push(Priority::Low, now, 2, 2));
        assert!(matches!(q.push(Priority::Low, now, 2, 3), Pushed::Full(3)));
        match q.push(Priority::Critical, now, 2, 4) {
            Pushed::Queued {
                evicted: Some((t, 2, _)),
                ..
            } => assert_eq!(t, b),
            other => panic!("{other:?}"),
        }
        assert_eq!(q.take(b), Some(Fate::Evicted));
        assert_eq!(q.take(a), None, "still waiting");
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_queue_full_of_critical_waiters_takes_a_critical_newcomer_in_place_of_the_oldest() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(5);
        let mut q = WaitQueue::new(8);
        let old = queued(q.push(Priority::Critical, t0, 2, 1));
        queued(q.push(Priority::Critical, later, 2, 2));
        // Below critical, a full queue still refuses the newcomer.
        assert!(matches!(
            q.push(Priority::High, later, 2, 3),
            Pushed::Full(3)
        ));
        match q.push(Priority::Critical, later, 2, 4) {
            Pushed::Queued {
                evicted: Some((t, 1, _)),
                ..
            } => assert_eq!(t, old),
            other => panic!("{other:?}"),
        }
        assert_eq!(q.take(old), Some(Fate::Evicted));
        assert_eq!(q.len(), 2);
        let order: Vec<u32> =
            std::iter::from_fn(|| q.grant(later, None).map(|(_, p, _)| p)).collect();
        assert_eq!(order, [2, 4]);
        // An empty queue with no room refuses a critical request as any other.
        assert!(matches!(
            q.push(Priority::Critical, later, 0, 5),
            Pushed::Full(5)
        ));
    }

    #[test]
    fn waiters_past_the_target_expire_and_a_cancelled_grant_is_reported() {
        let t0 = Instant::now();
        let mut q = WaitQueue::new(4);
        let old = queued(q.push(Priority::High, t0, 4, 1));
        let young = queued(q.push(Priority::High, t0 + Duration::from_millis(8), 4, 2));
        let mut expired = Vec::new();
        // The queue has stood its interval (10 ms, as long as the target).
        let patience = Patience {
            wait: Duration::from_millis(10),
            interval: Duration::from_millis(10),
        };
        q.expire(t0 + Duration::from_millis(10), patience, |t, p| {
            expired.push((t, p))
        });
        assert_eq!(expired, [(old, 1)]);
        assert_eq!(q.take(old), Some(Fate::Expired));
        assert_eq!(q.take(old), None, "stale ticket");
        let (t, _, waited) = q.grant(t0 + Duration::from_millis(9), None).unwrap();
        assert_eq!((t, waited), (young, Duration::from_millis(1)));
        assert_eq!(q.cancel(young), Some(Fate::Granted));
        assert_eq!(q.free.len(), q.slots.len(), "every slot is free again");
    }

    const TARGET: Duration = Duration::from_millis(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The payloads an expiry pass over every lane refuses, under `priority`'s patience.
    fn expired_at(q: &mut WaitQueue<u32>, now: Instant, priority: Priority) -> Vec<u32> {
        let mut out = Vec::new();
        q.expire(now, Patience::new(TARGET, priority), |_, p| out.push(p));
        out
    }

    /// The knee at light load: one waiter of a burst is still waiting past its target, with
    /// the queue busy only as long as it has been. It is not refused (the queue has not stood
    /// the interval) and is served when a slot frees, as late as the interval allows.
    #[test]
    fn a_late_waiter_in_a_burst_is_served_when_the_queue_is_not_standing() {
        let t0 = Instant::now();
        let mut q = WaitQueue::new(8);
        let late = queued(q.push(Priority::Low, t0, 8, 1));
        let patience = Patience::new(TARGET, Priority::Low);
        assert_eq!(patience.interval, 2 * TARGET);
        assert_eq!(q.deadline(t0, patience), t0 + 2 * TARGET);
        for past in [TARGET, ms(15), 2 * TARGET - ms(1)] {
            assert!(!q.stands(t0 + past, patience));
            assert!(expired_at(&mut q, t0 + past, Priority::Low).is_empty());
        }
        let (t, _, waited) = q.grant(t0 + 2 * TARGET - ms(1), None).unwrap();
        assert_eq!((t, waited), (late, ms(19)));
        assert_eq!(q.take(late), Some(Fate::Granted));
    }

    /// Overload: once the queue has held waiters for the interval, every waiter past its
    /// target is refused, as before; the younger ones wait on, and each is refused at its own
    /// target while the queue stands.
    #[test]
    fn a_standing_queue_still_refuses_past_the_target() {
        let t0 = Instant::now();
        let mut q = WaitQueue::new(8);
        let old = queued(q.push(Priority::Normal, t0, 8, 1));
        queued(q.push(Priority::Normal, t0 + ms(12), 8, 2));
        queued(q.push(Priority::Normal, t0 + ms(15), 8, 3));
        // Stood 20 ms: the interval. The first (20 ms) is refused, the others (8, 5) wait.
        assert_eq!(expired_at(&mut q, t0 + ms(20), Priority::Normal), [1]);
        assert_eq!(q.take(old), Some(Fate::Expired));
        assert_eq!(q.len(), 2);
        assert!(expired_at(&mut q, t0 + ms(21), Priority::Normal).is_empty());
        assert_eq!(expired_at(&mut q, t0 + ms(22), Priority::Normal), [2]);
        assert_eq!(expired_at(&mut q, t0 + ms(25), Priority::Normal), [3]);
        assert_eq!(q.len(), 0);
    }

    /// No waiter outlasts the interval, whatever else the queue does; and a critical waiter
    /// keeps its longer allowance of two targets, no more, standing or not.
    #[test]
    fn no_wait_outlasts_the_interval_and_critical_waits_two_targets() {
        let t0 = Instant::now();
        let mut q = WaitQueue::new(8);
        queued(q.push(Priority::High, t0, 8, 1));
        assert!(expired_at(&mut q, t0 + 2 * TARGET - ms(1), Priority::High).is_empty());
        assert_eq!(expired_at(&mut q, t0 + 2 * TARGET, Priority::High), [1]);

        let t1 = t0 + ms(1_000);
        let mut q = WaitQueue::new(8);
        let critical = Patience::new(TARGET, Priority::Critical);
        assert_eq!((critical.wait, critical.interval), (2 * TARGET, 2 * TARGET));
        queued(q.push(Priority::Critical, t1, 8, 7));
        assert_eq!(q.deadline(t1, critical), t1 + 2 * TARGET);
        assert!(expired_at(&mut q, t1 + ms(19), Priority::Critical).is_empty());
        assert_eq!(expired_at(&mut q, t1 + ms(20), Priority::Critical), [7]);
    }

    /// Critical requests alone crowd the queue once two of them wait and nothing else does.
    #[test]
    fn two_critical_waiters_alone_are_a_crowd() {
        let t0 = Instant::now();
        let mut q = WaitQueue::new(8);
        assert!(!q.critical_crowd(1), "a first critical waiter alone");
        queued(q.push(Priority::Critical, t0, 8, 1));
        assert!(!q.critical_crowd(0));
        assert!(q.critical_crowd(1), "with a second coming");
        queued(q.push(Priority::Critical, t0, 8, 2));
        assert!(q.critical_crowd(0));
        queued(q.push(Priority::Low, t0, 8, 3));
        assert!(!q.critical_crowd(0), "others wait too");
    }

    /// A queue that refused a waiter past its target keeps standing for [`MEMORY`] intervals
    /// though it emptied: under overload a small queue empties between arrivals, and each
    /// newcomer is refused at its target, not let wait the interval.
    #[test]
    fn a_queue_that_refused_lately_stands_though_it_emptied() {
        let t0 = Instant::now();
        let mut q = WaitQueue::new(8);
        let patience = Patience::new(TARGET, Priority::Normal);
        queued(q.push(Priority::Normal, t0, 8, 1));
        assert_eq!(expired_at(&mut q, t0 + 2 * TARGET, Priority::Normal), [1]);
        assert_eq!(
            (q.len(), q.standing_for(t0 + 2 * TARGET)),
            (0, Duration::ZERO)
        );
        // Emptied, but it refused at t0 + 20 ms: it stands until 16 intervals later.
        let t1 = t0 + ms(100);
        queued(q.push(Priority::Normal, t1, 8, 2));
        assert!(q.stands(t1, patience));
        assert_eq!(expired_at(&mut q, t1 + TARGET, Priority::Normal), [2]);
        // Once the memory has passed, a newcomer is a burst again.
        let memory = patience.interval * MEMORY;
        let t2 = t1 + TARGET + memory;
        queued(q.push(Priority::Normal, t2, 8, 3));
        assert!(!q.stands(t2 + TARGET, patience));
        assert!(expired_at(&mut q, t2 + TARGET, Priority::Normal).is_empty());
    }
}

/// The expiry rule as a state machine: random pushes, grants, cancellations and expiry
/// passes (as the limiter runs them: every priority below critical, then critical) on a
/// clock that moves by random steps.
#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::FileFailurePersistence;

    const TARGET: Duration = Duration::from_millis(10);

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize, usize),
        Grant(bool),
        Cancel(usize),
        Expire,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..5usize, 1..8usize).prop_map(|(p, b)| Op::Push(p, b)),
            1 => any::<bool>().prop_map(Op::Grant),
            1 => any::<usize>().prop_map(Op::Cancel),
            2 => Just(Op::Expire),
            3 => (0..25u64).prop_map(Op::Advance),
        ]
    }

    /// A waiter as the model sees it.
    struct Waiter {
        ticket: Ticket,
        since: Instant,
        patience: Patience,
        deadline: Instant,
    }

    /// An expiry pass as the limiter runs it (every priority below critical, then critical),
    /// checked against the model.
    fn pass(
        q: &mut WaitQueue<u32>,
        waiting: &mut Vec<Waiter>,
        now: Instant,
    ) -> Result<(), TestCaseError> {
        let critical = Priority::Critical.index();
        let mut expired = Vec::new();
        for (lanes, p) in [
            (0..critical, Priority::Normal),
            (critical..critical + 1, Priority::Critical),
        ] {
            let patience = Patience::new(TARGET, p);
            let stood = q.stands(now, patience);
            let before = expired.len();
            q.expire_lanes(lanes, now, patience, |t, _| expired.push(t));
            prop_assert!(stood || expired.len() == before, "refused unstood");
        }
        for t in expired {
            let w = waiting.iter().position(|w| w.ticket == t).unwrap();
            let w = waiting.remove(w);
            prop_assert!(now - w.since >= w.patience.wait, "refused early");
            prop_assert_eq!(q.take(t), Some(Fate::Expired));
        }
        for w in waiting.iter() {
            prop_assert!(now < w.deadline, "kept past its deadline");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
                "proptest-regressions/queue.txt",
            ))),
            ..ProptestConfig::default()
        })]

        /// A waiter is never refused before its target; an expiry pass at or after its
        /// deadline always refuses it; the deadline is never later than its arrival plus
        /// `max(wait, interval)`; a queue that does not stand refuses nobody; and the queue
        /// counts exactly the waiters the model holds.
        #[test]
        fn expiry_never_refuses_early_nor_lets_a_wait_outlast_its_bound(
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let mut now = Instant::now();
            let mut q = WaitQueue::new(8);
            let mut waiting: Vec<Waiter> = Vec::new();
            let mut next = 0u32;
            for op in ops {
                match op {
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Push(p, bound) => {
                        let priority = Priority::ALL[p];
                        next += 1;
                        match q.push(priority, now, bound, next) {
                            Pushed::Queued { ticket, evicted } => {
                                if let Some((t, ..)) = evicted {
                                    prop_assert_eq!(q.take(t), Some(Fate::Evicted));
                                    waiting.retain(|w| w.ticket != t);
                                }
                                let patience = Patience::new(TARGET, priority);
                                let deadline = q.deadline(now, patience);
                                let bound = patience.wait.max(patience.interval);
                                prop_assert!(deadline >= now + patience.wait);
                                prop_assert!(deadline <= now + bound);
                                waiting.push(Waiter { ticket, since: now, patience, deadline });
                            }
                            Pushed::Full(_) => {}
                        }
                    }
                    Op::Grant(newest) => {
                        // As the limiter hands a slot on: the expiry pass first.
                        pass(&mut q, &mut waiting, now)?;
                        if let Some((t, _, waited)) = q.grant(now, newest.then_some(TARGET)) {
                            let w = waiting.iter().position(|w| w.ticket == t).unwrap();
                            prop_assert_eq!(waited, now - waiting[w].since);
                            prop_assert!(now < waiting[w].deadline, "granted past its deadline");
                            prop_assert_eq!(q.take(t), Some(Fate::Granted));
                            waiting.remove(w);
                        }
                    }
                    Op::Cancel(k) => {
                        if !waiting.is_empty() {
                            let w = waiting.remove(k % waiting.len());
                            prop_assert_eq!(q.cancel(w.ticket), None);
                        }
                    }
                    Op::Expire => pass(&mut q, &mut waiting, now)?,
                }
                prop_assert_eq!(q.len(), waiting.len());
            }
        }
    }
}
