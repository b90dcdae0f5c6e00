//! A wake-up channel in shared memory: a sequence word that is bumped on
//! every event, plus a count of sleepers so that a notify costs no system
//! call when nobody sleeps.
//!
//! A waiter spins, then sleeps on the sequence word (`backoff`: the one
//! policy of the core).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::backoff::{Backoff, Learner, Next};
use super::deadline::Deadline;
use super::futex;

/// What this process's waits on a signal (a queue's data and room, the
/// arena's room) have learned about spinning (`sys::backoff`).
static WAITS: Learner = Learner::new();

/// Layout of a signal in shared memory.
#[repr(C)]
#[derive(Debug)]
pub struct Signal {
    /// Bumped (wrapping) on every event.
    pub seq: AtomicU32,
    /// Threads sleeping (or about to sleep) on `seq`.
    pub sleepers: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<Signal>() == 8);

impl Signal {
    /// A signal with no event yet.
    pub const fn new() -> Self {
        Signal { seq: AtomicU32::new(0), sleepers: AtomicU32::new(0) }
    }

    /// Records an event and wakes every sleeper.
    pub fn notify(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            futex::wake_all(&self.seq);
        }
    }

    /// The current sequence, to pass to `sleep` after re-checking the
    /// condition.
    pub fn current(&self) -> u32 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Sleeps until an event after `seen`, `until`, or a spurious wake-up.
    /// Returns false when `until` has passed.
    pub fn sleep(&self, seen: u32, until: impl Into<Deadline>) -> bool {
        futex::sleep_counted(&self.seq, seen, &self.sleepers, until) != futex::Wake::TimedOut
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
        let seen = signal.current();
        if let Some(v) = attempt()? {
            return Ok(Some(v));
        }
        match backoff.next(deadline) {
            Next::Retry => {}
            Next::TimedOut => return Ok(None),
            Next::Sleep => {
                if !signal.sleep(seen, deadline.capped(check_every)) {
                    check()?;
                }
            }
        }
    }
}
