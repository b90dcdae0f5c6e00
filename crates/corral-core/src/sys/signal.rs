//! A wake-up channel in shared memory: a sequence word that is bumped on
//! every event and whose low bit says that a waiter may be asleep, so that
//! a notify makes the futex wake system call only when one may be needed.
//!
//! A waiter spins, then sleeps on the sequence word (`backoff`: the one
//! policy of the core).
//!
//! # Protocol (an event count: Vyukov's, with the waiter bit in the word)
//!
//! `seq` counts events in its upper 31 bits (a notify adds `EVENT` = 2)
//! and holds `WAITING` in bit 0. A waiter that is about to sleep
//! (`prepare`) sets `WAITING` with an atomic or, tries its condition once
//! more, and only then sleeps while `seq` still holds the value its or
//! returned (`sleep`). A notify adds `EVENT`; when the value before its add
//! had `WAITING`, it clears the bit (`fetch_and`), and the notify whose
//! `fetch_and` found the bit set wakes every sleeper: one system call per
//! round of sleeps, however many events arrive before the woken threads
//! run. The `sleepers` count (`futex::sleep_counted`) was kept by a sleeper
//! from before it slept until it was running again, and every notify in that
//! window (0.9 per task on the result queue of a pool of two workers whose
//! completion thread waits for a core) made a system call that found nobody
//! to wake.
//!
//! Why no wake-up is lost. All the operations below are read-modify-writes
//! of `seq`, so they have one order (its modification order); a notify's
//! add is a release and a waiter's or an acquire (every RMW continues a
//! release sequence). Take a waiter whose or is at position `p` of that
//! order, then a failed try of its condition, then
//! `futex_wait(seq, v)` where `v` is the value after its or (bit 0 set).
//! A notify whose add comes before `p` published its event before the
//! add, so the waiter's try (after its acquire or, which reads a value of
//! that release sequence) sees the event and does not sleep. A notify
//! whose add comes after `p` finds `WAITING` set, unless a `fetch_and`
//! between `p` and its add cleared it; either its own `fetch_and` or that
//! earlier one found the bit set, and that notify calls `wake_all` after
//! its `fetch_and`. The value then differs from `v` (the `fetch_and` took
//! bit 0 away), so the kernel, which compares `seq` with `v` and queues the
//! waiter in one step under its hash-bucket lock, either refuses to sleep
//! (`EAGAIN`) or has queued the waiter before that `wake_all` runs. The
//! value could equal `v` again only after 2^31 events between the
//! waiter's or and its sleep; the waits sleep in slices (`check_every`),
//! so even that would cost one slice, not a hang. A waiter that times out
//! leaves `WAITING` set: the next notify makes one wake call for nobody and
//! clears it.
//!
//! The async hub (`sync::async_wait`) watches `seq` from a thread that
//! cannot try the condition again between its "I sleep" and its sleep; it
//! keeps the older protocol: it counts itself in `sleepers` before it
//! compares `seq` with the value its coroutine saw, and a notify, which
//! loads `sleepers` after its add (both SeqCst), wakes when the count is
//! above zero. Only the hub uses `sleepers`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::backoff::{Backoff, Learner, Next};
use super::deadline::Deadline;
use super::futex;

/// What this process's waits on a signal (a queue's data and room, the
/// arena's room) have learned about spinning (`sys::backoff`).
static WAITS: Learner = Learner::new();

/// Bit 0 of `seq`: a waiter may be asleep (or about to sleep) on it.
const WAITING: u32 = 1;
/// What a notify adds to `seq`: the event count lives above `WAITING`.
const EVENT: u32 = 2;

/// Layout of a signal in shared memory.
#[repr(C)]
#[derive(Debug)]
pub struct Signal {
    /// Events (wrapping) counted in steps of 2; bit 0 is set by a waiter
    /// about to sleep and cleared by the notify that wakes it (see the
    /// module docs).
    pub seq: AtomicU32,
    /// Async hub watches of `seq` (`sync::async_wait`): a notify also wakes
    /// while this is above zero.
    pub sleepers: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<Signal>() == 8);

impl Signal {
    /// A signal with no event yet.
    pub const fn new() -> Self {
        Signal { seq: AtomicU32::new(0), sleepers: AtomicU32::new(0) }
    }

    /// Records an event (after the caller published it) and wakes every
    /// sleeper, making the futex system call only when a waiter set
    /// `WAITING` since the last wake, or the async hub watches.
    pub fn notify(&self) {
        let before = self.seq.fetch_add(EVENT, Ordering::SeqCst);
        // Only the notify that clears the bit wakes (see the module docs).
        let claimed = before & WAITING != 0 && self.seq.fetch_and(!WAITING, Ordering::SeqCst) & WAITING != 0;
        if claimed || self.sleepers.load(Ordering::SeqCst) > 0 {
            futex::wake_all(&self.seq);
        }
    }

    /// Announces a sleep: sets `WAITING` and returns the value to pass to
    /// `sleep` once the caller has tried its condition again (after this
    /// call: an event published before it is seen by that try).
    pub fn prepare(&self) -> u32 {
        self.seq.fetch_or(WAITING, Ordering::SeqCst) | WAITING
    }

    /// True while a waiter has announced a sleep (`prepare`) that no
    /// notify has answered yet (for tests: "the consumer is asleep").
    pub fn waiting(&self) -> bool {
        self.seq.load(Ordering::SeqCst) & WAITING != 0
    }

    /// Sleeps until a notify after `prepare` returned `seen`, `until`, or a
    /// spurious wake-up. Returns false when `until` has passed.
    pub fn sleep(&self, seen: u32, until: impl Into<Deadline>) -> bool {
        futex::wait(&self.seq, seen, until) != futex::Wake::TimedOut
    }
}

impl Default for Signal {
    fn default() -> Self {
        Self::new()
    }
}

/// Repeats `attempt` until it gives `Some`, spinning then sleeping on
/// `signal` (`Backoff`). Every `check_every` of sleep, `check` runs and may
/// end the wait with an error (a closed channel, a dead peer). `None` from
/// the whole function means the deadline passed.
pub fn wait_for<T, E>(
    signal: &Signal,
    deadline: Option<Instant>,
    check_every: Duration,
    mut attempt: impl FnMut() -> Result<Option<T>, E>,
    mut check: impl FnMut() -> Result<(), E>,
) -> Result<Option<T>, E> {
    let deadline = Deadline::from(deadline);
    let mut backoff = Backoff::adaptive(&WAITS);
    loop {
        if let Some(v) = attempt()? {
            return Ok(Some(v));
        }
        match backoff.next(deadline) {
            Next::Retry => {}
            Next::TimedOut => return Ok(None),
            Next::Sleep => {
                #[cfg(feature = "testing")]
                crate::testing::reached(crate::testing::Point::SignalSleeping);
                // The try after `prepare` is what makes the sleep safe: an
                // event it does not see comes with a wake (module docs).
                let seen = signal.prepare();
                if let Some(v) = attempt()? {
                    return Ok(Some(v));
                }
                if !signal.sleep(seen, deadline.capped(check_every)) {
                    check()?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn a_notify_with_nobody_waiting_counts_the_event_and_leaves_the_bit_clear() {
        let s = Signal::new();
        s.notify();
        s.notify();
        assert_eq!(s.seq.load(Ordering::SeqCst), 2 * EVENT);
    }

    #[test]
    fn prepare_sets_the_waiting_bit_and_the_next_notify_clears_it() {
        let s = Signal::new();
        let seen = s.prepare();
        assert_eq!(seen, WAITING);
        assert_eq!(s.prepare(), WAITING, "a second waiter sees the same value");
        s.notify();
        assert_eq!(s.seq.load(Ordering::SeqCst), EVENT, "the notify that woke cleared the bit");
        // The value moved on: a sleep on the value `prepare` gave returns.
        assert!(s.sleep(seen, Some(Instant::now() + Duration::from_secs(30))));
    }

    #[test]
    fn a_sleeper_is_woken_by_the_notify_after_its_prepare() {
        let s = Arc::new(Signal::new());
        let done = Arc::new(AtomicBool::new(false));
        let (s2, done2) = (Arc::clone(&s), Arc::clone(&done));
        let sleeper = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let seen = s2.prepare();
                if done2.load(Ordering::SeqCst) {
                    return true;
                }
                if !s2.sleep(seen, Some(deadline)) {
                    return false;
                }
            }
        });
        // Notify only once the sleeper announced itself (no sleep-based sync).
        while s.seq.load(Ordering::SeqCst) & WAITING == 0 {
            std::thread::yield_now();
        }
        done.store(true, Ordering::SeqCst);
        s.notify();
        assert!(sleeper.join().unwrap(), "the sleeper was not woken before its 30 s deadline");
    }
}
