//! The wait queue in front of the limit: bounded, highest priority first, pure.
//!
//! A request that finds the limit full may wait here, for at most the queueing-delay target.
//! A freed slot goes to the best waiter: the highest priority, and within a priority the
//! oldest — or, while the queue stands (it has not emptied for a whole target), the newest:
//! under a standing queue the oldest waiters are the ones about to miss their target anyway,
//! and serving the newest keeps the admitted latency low (adaptive LIFO, as in Facebook's
//! CoDel-managed RPC queues). A full queue makes room for a higher priority by evicting the
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
use tokio::time::Instant;

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
    /// handed back so it can be woken).
    Queued {
        ticket: Ticket,
        evicted: Option<(Ticket, T)>,
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
        }
    }

    /// Requests waiting now.
    pub(crate) fn len(&self) -> usize {
        self.waiting
    }

    /// The longest time the queue has held waiters without emptying.
    pub(crate) fn standing_for(&self, now: Instant) -> std::time::Duration {
        self.busy_since.map_or(std::time::Duration::ZERO, |s| {
            now.saturating_duration_since(s)
        })
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
                Some(lane) => self.lanes[lane].pop_back(),
                None if priority == Priority::Critical => {
                    self.lanes[Priority::Critical.index()].pop_front()
                }
                None => None,
            };
            let Some(victim) = victim else {
                return Pushed::Full(payload);
            };
            self.waiting -= 1;
            let slot = &mut self.slots[victim.index as usize];
            if let State::Waiting { payload, .. } =
                std::mem::replace(&mut slot.state, State::Done(Fate::Evicted))
            {
                evicted = Some((victim, payload));
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

    /// The priority of the best waiter, if any.
    pub(crate) fn best_priority(&self) -> Option<Priority> {
        (0..5)
            .rev()
            .find(|&p| !self.lanes[p].is_empty())
            .map(|p| Priority::ALL[p])
    }

    /// Hands a slot to the best waiter: the highest priority; the oldest of it, or the newest
    /// when `newest_first` (except for critical requests, always the oldest). Returns its ticket, its payload and how long it waited.
    pub(crate) fn grant(
        &mut self,
        now: Instant,
        newest_first: bool,
    ) -> Option<(Ticket, T, std::time::Duration)> {
        let (index, lane) = self
            .lanes
            .iter_mut()
            .enumerate()
            .rev()
            .find(|(_, l)| !l.is_empty())?;
        // Critical requests are served in order: there are few of them, each must be
        // served, and newest-first could starve the oldest.
        let ticket = if newest_first && index != Priority::Critical.index() {
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

    /// Ends the wait of every waiter that has waited `max_wait` or longer, calling `f` with
    /// each one's ticket and payload.
    #[cfg(test)]
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        max_wait: std::time::Duration,
        f: impl FnMut(Ticket, T),
    ) {
        self.expire_lanes(0..5, now, max_wait, f);
    }

    /// [`expire`](Self::expire) for the waiters of the priorities in `priorities` (indices).
    pub(crate) fn expire_lanes(
        &mut self,
        priorities: std::ops::Range<usize>,
        now: Instant,
        max_wait: std::time::Duration,
        mut f: impl FnMut(Ticket, T),
    ) {
        for lane in &mut self.lanes[priorities] {
            // Waiters enter each lane in time order; LIFO grants take from the back, so the
            // front is always the oldest.
            while let Some(&ticket) = lane.front() {
                let slot = &mut self.slots[ticket.index as usize];
                let State::Waiting { since, .. } = &slot.state else {
                    lane.pop_front();
                    continue;
                };
                if now.saturating_duration_since(*since) < max_wait {
                    break;
                }
                lane.pop_front();
                self.waiting -= 1;
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
            std::iter::from_fn(|| q.grant(now, false).map(|(_, p, _)| p)).collect();
        assert_eq!(order, [2, 3, 4, 1]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_standing_queue_serves_the_newest_first() {
        let now = Instant::now();
        let mut q = WaitQueue::new(8);
        for i in 0..3 {
            queued(q.push(Priority::Normal, now, 8, i));
        }
        assert_eq!(q.grant(now, true).map(|(_, p, _)| p), Some(2));
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
                evicted: Some((t, 2)),
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
                evicted: Some((t, 1)),
                ..
            } => assert_eq!(t, old),
            other => panic!("{other:?}"),
        }
        assert_eq!(q.take(old), Some(Fate::Evicted));
        assert_eq!(q.len(), 2);
        let order: Vec<u32> =
            std::iter::from_fn(|| q.grant(later, false).map(|(_, p, _)| p)).collect();
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
        q.expire(
            t0 + Duration::from_millis(10),
            Duration::from_millis(10),
            |t, p| expired.push((t, p)),
        );
        assert_eq!(expired, [(old, 1)]);
        assert_eq!(q.take(old), Some(Fate::Expired));
        assert_eq!(q.take(old), None, "stale ticket");
        let (t, _, waited) = q.grant(t0 + Duration::from_millis(9), false).unwrap();
        assert_eq!((t, waited), (young, Duration::from_millis(1)));
        assert_eq!(q.cancel(young), Some(Fate::Granted));
        assert_eq!(q.free.len(), q.slots.len(), "every slot is free again");
    }
}
