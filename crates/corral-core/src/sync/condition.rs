//! The wait queue of a `threading.Condition` shared across processes.
//!
//! A waiter registers in a slot, with a ticket, while it still holds the
//! condition's lock; then releases the lock (the caller does that) and
//! sleeps on its slot's state word. `notify(n)` (called with the lock held)
//! moves the `n` oldest waiting slots to SIGNALED and wakes each, so exactly
//! `n` waiters wake, oldest first, as `threading.Condition` promises. A
//! waiter that times out takes its slot back by compare-and-swap; if a
//! notify got there first, it counts as notified.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use super::block::{Kind, Shared, SyncBlock, SyncState};
use crate::error::{CoreError, Result};
use crate::sys::futex;
use crate::sys::liveness::{my_pid, pid_alive};

/// Most threads (in all processes) waiting on one condition at once.
pub const MAX_WAITERS: usize = 256;

const FREE: u32 = 0;
const CLAIMED: u32 = 1;
const WAITING: u32 = 2;
const SIGNALED: u32 = 3;

/// One waiter.
#[repr(C)]
#[derive(Debug)]
pub struct CondSlot {
    /// FREE, CLAIMED (being filled), WAITING or SIGNALED; the futex word.
    pub state: AtomicU32,
    /// The waiter's pid, to free the slot of a dead process.
    pub pid: AtomicU32,
    /// Arrival order.
    pub ticket: AtomicU64,
}

/// State of a condition's wait queue in its block.
#[repr(C)]
#[derive(Debug)]
pub struct ConditionState {
    /// Next ticket to hand out.
    pub next_ticket: AtomicU64,
    /// Slots in state WAITING (a hint that lets notify skip the scan).
    pub waiting: AtomicU32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The waiters.
    pub slots: [CondSlot; MAX_WAITERS],
}

impl SyncState for ConditionState {
    const KIND: Kind = Kind::Condition;
}

/// A process-shared condition wait queue.
#[derive(Debug, Clone)]
pub struct Condition {
    state: Shared<ConditionState>,
}

impl Condition {
    /// A new, empty wait queue.
    pub fn new() -> Result<Self> {
        Ok(Condition { state: Shared::create()? })
    }

    /// The wait queue behind a descriptor from another process.
    pub fn open(fd: std::os::fd::OwnedFd) -> Result<Self> {
        Ok(Condition { state: Shared::open(fd)? })
    }

    /// The block, to hand to another process.
    pub fn block(&self) -> &SyncBlock {
        self.state.block()
    }

    fn st(&self) -> &ConditionState {
        self.state.get()
    }

    /// Registers the caller as a waiter (call with the lock held); returns
    /// its slot.
    pub fn register(&self) -> Result<usize> {
        let st = self.st();
        for pass in 0..2 {
            for (i, slot) in st.slots.iter().enumerate() {
                if slot.state.compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    slot.pid.store(my_pid(), Ordering::Relaxed);
                    slot.ticket.store(st.next_ticket.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
                    st.waiting.fetch_add(1, Ordering::SeqCst);
                    slot.state.store(WAITING, Ordering::Release);
                    return Ok(i);
                }
            }
            if pass == 0 {
                self.free_dead_slots();
            }
        }
        Err(CoreError::Invalid(format!("more than {MAX_WAITERS} threads wait on one Condition")))
    }

    fn free_dead_slots(&self) {
        let st = self.st();
        for slot in &st.slots {
            let s = slot.state.load(Ordering::Acquire);
            if (s == WAITING || s == SIGNALED) && !pid_alive(slot.pid.load(Ordering::Relaxed)) {
                if s == WAITING
                    && slot.state.compare_exchange(WAITING, FREE, Ordering::AcqRel, Ordering::Relaxed).is_ok()
                {
                    st.waiting.fetch_sub(1, Ordering::SeqCst);
                } else {
                    let _ = slot.state.compare_exchange(SIGNALED, FREE, Ordering::AcqRel, Ordering::Relaxed);
                }
            }
        }
    }

    /// Sleeps in `slot` until notified (true) or `deadline` (false). The
    /// slot is free again when this returns.
    pub fn wait(&self, slot: usize, deadline: Option<Instant>) -> Result<bool> {
        Ok(self.wait_slice(slot, deadline, true)?.unwrap_or(false))
    }

    /// One slice of a wait: `Some(notified)` when the wait is over (the
    /// slot is free again), `None` when `until` passed but `last` is false
    /// (the slot stays registered for the next slice).
    pub fn wait_slice(&self, slot: usize, until: Option<Instant>, last: bool) -> Result<Option<bool>> {
        let s = self.st().slots.get(slot).ok_or_else(|| CoreError::Invalid(format!("no slot {slot}")))?;
        loop {
            match s.state.load(Ordering::Acquire) {
                SIGNALED => {
                    s.state.store(FREE, Ordering::Release);
                    return Ok(Some(true));
                }
                WAITING => {}
                other => return Err(CoreError::corrupt("condition", format!("slot {slot} in state {other}"))),
            }
            if futex::wait(&s.state, WAITING, until) == futex::Wake::TimedOut {
                if !last {
                    return Ok(None);
                }
                return Ok(Some(!self.cancel(slot)));
            }
        }
    }

    /// Takes a slot back without waiting; false if a notify reached it first
    /// (the notification is then consumed).
    pub fn cancel(&self, slot: usize) -> bool {
        let st = self.st();
        let Some(s) = st.slots.get(slot) else { return false };
        if s.state.compare_exchange(WAITING, FREE, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            st.waiting.fetch_sub(1, Ordering::SeqCst);
            return true;
        }
        s.state.store(FREE, Ordering::Release);
        false
    }

    /// Wakes up to `n` of the oldest waiters; returns how many.
    pub fn notify(&self, n: usize) -> usize {
        let st = self.st();
        let mut woken = 0;
        while woken < n && st.waiting.load(Ordering::SeqCst) > 0 {
            let oldest = st
                .slots
                .iter()
                .filter(|s| s.state.load(Ordering::Acquire) == WAITING)
                .min_by_key(|s| s.ticket.load(Ordering::Relaxed));
            let Some(slot) = oldest else { break };
            let pid = slot.pid.load(Ordering::Relaxed);
            // A waiter of another process may have died waiting: its slot
            // is freed, not woken, so the notification reaches a live one.
            // (A liveness check costs a /proc read: only for other processes.)
            if pid != my_pid() && !pid_alive(pid) {
                if slot.state.compare_exchange(WAITING, FREE, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                    st.waiting.fetch_sub(1, Ordering::SeqCst);
                }
                continue;
            }
            if slot.state.compare_exchange(WAITING, SIGNALED, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                st.waiting.fetch_sub(1, Ordering::SeqCst);
                futex::wake(&slot.state, 1);
                woken += 1;
            }
        }
        woken
    }

    /// Frees the slots of waiters whose process died while waiting; returns
    /// how many there were (a `Barrier` breaks when one of its parties died).
    pub fn reap_dead_waiters(&self) -> u32 {
        let st = self.st();
        let mut dead = 0;
        for slot in &st.slots {
            if slot.state.load(Ordering::Acquire) == WAITING
                && !pid_alive(slot.pid.load(Ordering::Relaxed))
                && slot.state.compare_exchange(WAITING, FREE, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                st.waiting.fetch_sub(1, Ordering::SeqCst);
                dead += 1;
            }
        }
        dead
    }

    /// The futex word of `slot` (WAITING until notified), for the async hub.
    pub fn slot_word(&self, slot: usize) -> Option<&AtomicU32> {
        self.st().slots.get(slot).map(|s| &s.state)
    }

    /// True once `slot` was notified (the wait can be completed without
    /// blocking).
    pub fn is_signaled(&self, slot: usize) -> bool {
        self.slot_word(slot).is_some_and(|w| w.load(Ordering::Acquire) == SIGNALED)
    }

    /// Threads waiting now.
    pub fn waiters(&self) -> u32 {
        self.st().waiting.load(Ordering::SeqCst)
    }
}
