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
//! of VM (the sleeper's thread must be scheduled again), while a peer
//! running on the other core answers a ping within about a microsecond. A
//! spin catches that answer; the sleep keeps an idle waiter from burning a
//! core.
//!
//! Why [`SPIN`] = 20 µs: the core had two tunings, 50 µs (the queue's
//! signal, the pipe) and 20 µs (Event, Semaphore; the robust lock's 200
//! pauses were 10-30 µs here). Measured on the 2-core AMD EPYC VM of this
//! repository, release builds, two processes, 100-byte messages, median
//! round trips, 3 runs alternating with the code before this policy, while
//! other builds and test suites kept the load average at 13-18 (an idle
//! machine was not to be had):
//!
//! | round trip (µs) / throughput    | before (main) | one policy, 50 µs | one policy, 20 µs |
//! |---------------------------------|--------------:|------------------:|------------------:|
//! | Event ping-pong                 |     48.5-48.9 |    110 (0.9 once) |         48.9-49.6 |
//! | Event, a busy loop per core     |     28.7-51.0 |           110-112 |         28.7-51.1 |
//! | Queue put/get ping-pong         |       6.7-119 |                 - |             57-58 |
//! | Pipe send/recv ping-pong        |       119-120 |                 - |            7.9-61 |
//! | Queue put/get, k msg/s          |        85-163 |            88-105 |            82-138 |
//!
//! When the machine is busy the spinner holds a core its peer is waiting
//! for, so each microsecond of spin past the point where a prompt answer
//! would have come is added to the round trip (50 µs: 110 µs per Event
//! round trip; the queue and pipe, which spun 50 µs before, drop from
//! ~119 to ~58 µs at 20 µs). When the machine is idle a prompt peer answers
//! within a microsecond (0.3-0.9 µs, BENCHMARKS.md and the run above), well
//! inside 20 µs. One tuning serves every site: none has shown a need for
//! another.
//!
//! A site that must bound its spin differently passes its own duration to
//! [`Backoff::with_spin`] under a named constant that says why.

use std::time::{Duration, Instant};

use super::deadline::Deadline;

/// How long a waiter spins before it sleeps: the one tuning (see above).
pub const SPIN: Duration = Duration::from_micros(20);

/// Most pause hints between two attempts while spinning: 2^4. A pause
/// costs 40-140 ns on the test VM, so a late attempt comes at most 1-2 µs
/// after the answer, against the 50-100 µs of a wake-up.
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
