//! The one backoff policy of the core: how a thread waits for something a
//! thread of this or another process will do (a lock released, a frame
//! pushed, a flag set, bytes on a socket).
//!
//! # Design
//!
//! A wait first *spins*: it retries its non-blocking attempt for at most
//! [`SPIN`], with a growing run of CPU pause hints between attempts (1, 2, 4,
//! 8, then 16, as crossbeam's `Backoff`: the first retries come within
//! nanoseconds, later ones stop hammering the cache line the peer writes).
//! Then it *sleeps* in the kernel (futex or `poll`) until woken, its
//! deadline, or the end of a slice after which the caller checks something
//! (an owner's liveness, a peer's exit). The policy decides only when to
//! stop spinning; each site keeps its own sleep, because what it sleeps on
//! differs (a futex word with a sleeper count, a signal, a socket).
//!
//! Why spin at all: a futex or `poll` wake-up costs 50-100 µs on this kind
//! of VM (the sleeper's thread must be scheduled again), while a peer on the
//! other core usually answers a ping within 5-20 µs. A spin catches that
//! answer; the sleep keeps an idle waiter from burning a core.
//!
//! Why [`SPIN`] = 50 µs: it was the signal's (queue) tuning, and the event's
//! and semaphore's 20 µs was the other. Measured on the 2-core AMD EPYC VM
//! of this repository (release build, two processes, 3 alternating runs,
//! medians; see BENCHMARKS.md for the harness):
//!
//! | round trip (µs)                      | 20 µs spin | 50 µs spin |
//! |--------------------------------------|-----------:|-----------:|
//! | Event ping-pong, idle machine        |   EVT20    |   EVT50    |
//! | Event ping-pong, a busy loop per core|  EVTB20    |  EVTB50    |
//!
//! A round trip that fits in the spin never sleeps; 50 µs covers the idle
//! machine's tail where 20 µs does not, and on a loaded machine neither
//! spin helps (the peer is not running), so the longer spin costs at most
//! 50 µs of CPU per wait that sleeps anyway. One tuning serves every site:
//! none has shown a need for another (the robust lock's former 200 spins
//! were 10-30 µs here).
//!
//! A site that must bound its spin differently passes its own duration to
//! [`Backoff::with_spin`] under a named constant that says why.

use std::time::{Duration, Instant};

use super::deadline::Deadline;

/// How long a waiter spins before it sleeps: the one tuning (see above).
pub const SPIN: Duration = Duration::from_micros(50);

/// Most pause hints between two attempts while spinning: 2^4. A pause
/// costs 40-140 ns on the test VM, so the gap between two late attempts
/// stays within 1-2 µs of a round trip that takes 5-20 µs.
const MAX_PAUSE_STEP: u32 = 4;

/// What a waiter should do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again now (the backoff has paused a little).
    Retry,
    /// The spin is spent: sleep in the kernel, then try again.
    Sleep,
    /// The deadline has passed: give up.
    TimedOut,
}

/// The state of one wait: created when the wait starts (free: the clock is
/// first read at the first failed attempt), asked [`Backoff::next`] after
/// each failed attempt.
#[derive(Debug, Clone)]
pub struct Backoff {
    spin: Duration,
    spin_end: Option<Instant>,
    step: u32,
}

impl Backoff {
    /// A wait that spins for [`SPIN`].
    pub const fn new() -> Self {
        Self::with_spin(SPIN)
    }

    /// A wait that spins for `spin` (zero: sleep at once).
    pub const fn with_spin(spin: Duration) -> Self {
        Backoff { spin, spin_end: None, step: 0 }
    }

    /// After a failed attempt: [`Next::TimedOut`] once `deadline` has
    /// passed, else [`Next::Retry`] (after a pause) while the spin lasts,
    /// then [`Next::Sleep`].
    pub fn next(&mut self, deadline: Deadline) -> Next {
        let now = Instant::now();
        if deadline.instant().is_some_and(|d| now >= d) {
            return Next::TimedOut;
        }
        let end = *self.spin_end.get_or_insert(now + self.spin);
        if now >= end {
            return Next::Sleep;
        }
        for _ in 0..1u32 << self.step {
            std::hint::spin_loop();
        }
        self.step = (self.step + 1).min(MAX_PAUSE_STEP);
        Next::Retry
    }

    /// True while the spin lasts (pausing a little), false once the caller
    /// should sleep: [`Backoff::next`] for a wait without a deadline.
    pub fn spin(&mut self) -> bool {
        self.next(Deadline::NEVER) == Next::Retry
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spins_for_its_duration_then_says_sleep() {
        let mut b = Backoff::with_spin(Duration::from_millis(2));
        let start = Instant::now();
        while b.next(Deadline::NEVER) == Next::Retry {}
        assert!(start.elapsed() >= Duration::from_millis(2));
        assert_eq!(b.next(Deadline::NEVER), Next::Sleep);
    }

    #[test]
    fn zero_spin_sleeps_at_once() {
        assert!(!Backoff::with_spin(Duration::ZERO).spin());
    }

    #[test]
    fn a_passed_deadline_wins_over_spinning() {
        let mut b = Backoff::new();
        assert_eq!(b.next(Deadline::now()), Next::TimedOut);
        assert_eq!(b.next(Deadline::NEVER), Next::Retry);
    }
}
