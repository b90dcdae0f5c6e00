//! A wake-up channel in shared memory: a sequence word that is bumped on
//! every event, plus a count of sleepers so that a notify costs no system
//! call when nobody sleeps.
//!
//! A waiter spins first (a peer on the other core usually answers within a
//! few microseconds, and a futex wake-up costs 50-100 µs on an idle VM), then
//! sleeps on the sequence word.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::futex;

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

/// How long a waiter spins before it sleeps.
pub const SPIN_TIME: Duration = Duration::from_micros(50);

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
    pub fn sleep(&self, seen: u32, until: Option<Instant>) -> bool {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let r = if self.seq.load(Ordering::SeqCst) != seen {
            futex::Wake::Maybe
        } else {
            futex::wait(&self.seq, seen, until)
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        r != futex::Wake::TimedOut
    }
}

impl Default for Signal {
    fn default() -> Self {
        Self::new()
    }
}

/// Repeats `attempt` until it gives `Some`, spinning for `SPIN_TIME` then
/// sleeping on `signal`. Every `check_every`, `check` runs and may end the
/// wait with an error (a closed channel, a dead peer). `None` from the whole
/// function means the deadline passed.
pub fn wait_for<T, E>(
    signal: &Signal,
    deadline: Option<Instant>,
    check_every: Duration,
    mut attempt: impl FnMut() -> Result<Option<T>, E>,
    mut check: impl FnMut() -> Result<(), E>,
) -> Result<Option<T>, E> {
    let spin_end = Instant::now() + SPIN_TIME;
    loop {
        let seen = signal.current();
        if let Some(v) = attempt()? {
            return Ok(Some(v));
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(None);
        }
        if now < spin_end {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            continue;
        }
        let slice = now + check_every;
        let until = deadline.map_or(slice, |d| d.min(slice));
        if !signal.sleep(seen, Some(until)) {
            check()?;
        }
    }
}
