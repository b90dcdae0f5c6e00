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
//! # Adaptation (issue 13: waits under load)
//!
//! A spin pays only while the peer runs. On a machine with no idle CPU it
//! does not: the spinner holds a core its peer waits for, and every
//! microsecond of spin is added to the answer. Measured (Event ping-pong
//! between two processes, a `while True: pass` per core; the fixed 20 µs
//! spin): 45-52 µs per round trip against 17-44 µs for
//! `multiprocessing.Event`, which never spins. So the spin of a wait is
//! chosen when it starts, from two signals:
//!
//! 1. *The machine*: when the kernel's count of runnable threads
//!    (`/proc/loadavg`, read at most every [`LOAD_CHECK_EVERY`] by the
//!    process) is at most the number of online CPUs, a spinner takes no
//!    running thread's core: it spins the full [`SPIN`].
//! 2. *The last spins of the same site* ([`Learner`], one per kind of wait
//!    and process): otherwise it spins the site's learned budget, which a
//!    spin that paid (the wait ended while spinning) multiplies by four
//!    and a spin that did not (the wait slept anyway) halves, between
//!    [`STEP`] and [`SPIN`], zero below [`STEP`] ([`learn`]): it grows
//!    while a third of the spins pay (a queue whose producer runs on the
//!    other core) and falls to zero while fewer do (an Event whose peer
//!    waits for this core). A site at zero spins [`PROBE`] once every
//!    [`PROBE_EVERY`] waits, so it learns again that spins pay once its
//!    peers run again. (Additive increase was tried first: a site that
//!    lost its budget while its peer was preempted took hundreds of waits
//!    to get it back, sleeping meanwhile: 2 x 20,000 locked increments
//!    under load once took 2.9 s instead of 0.3 s.)
//!
//! Measured (`benches/ab_waits.py`, 6 rounds alternating with the fixed
//! spin, medians; the shared VM's load average was 10-15, so "idle" had no
//! idle CPU either; `--under-load` adds a busy process per core):
//!
//! | row                          | idle: fixed -> adaptive | under load: fixed -> adaptive |
//! |------------------------------|------------------------:|------------------------------:|
//! | Event ping-pong (µs)         |              49.5 -> 6.2 |                   49.4 -> 6.4 |
//! | Pipe round trip (µs)         |             62.2 -> 16.9 |                  39.0 -> 21.5 |
//! | Queue 100 B put/get (k/s)    |              131 -> 169 |                     108 -> 168 |
//!
//! `multiprocessing.Event` took 16.8-17.5 µs in the same runs. When the
//! machine had idle CPUs both spun the full [`SPIN`]: 0.4-0.9 µs.
//!
//! A lock's waiter keeps the full [`SPIN`] (`robust_lock.rs` says why and
//! what was measured).
//!
//! Both are process-wide atomics: a wait reads them once when it starts
//! and records its outcome when it ends (`Drop`), so a site needs no code
//! for it. [`Backoff::with_spin`] keeps a fixed spin for a site that must.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::deadline::Deadline;

/// How long a waiter spins before it sleeps when the machine has an idle
/// CPU, and the most a learned budget reaches: the one tuning (see above).
pub const SPIN: Duration = Duration::from_micros(20);
const SPIN_NS: u32 = 20_000;
const _: () = assert!(SPIN.as_nanos() == SPIN_NS as u128);

/// The least budget that is not zero: where a paid probe restarts it.
pub const STEP: Duration = Duration::from_micros(2);
const STEP_NS: u32 = 2_000;
const _: () = assert!(STEP.as_nanos() == STEP_NS as u128);

/// The spin of a probe: a site whose budget is zero spins this long once
/// every [`PROBE_EVERY`] waits (a prompt peer answers well within it).
pub const PROBE: Duration = Duration::from_micros(5);
/// One wait in this many probes when its site's budget is zero (a probe
/// that does not pay costs at most [`PROBE`], so 0.6 µs per wait; one
/// that pays restarts the budget at [`STEP`]).
pub const PROBE_EVERY: u32 = 8;

/// How often a process reads the count of runnable threads again.
pub const LOAD_CHECK_EVERY: Duration = Duration::from_millis(10);

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

/// What one kind of wait has learned in this process: its spin budget and
/// a count of the waits that started while the budget was zero.
#[derive(Debug)]
pub struct Learner {
    /// Nanoseconds a wait of this kind spins when the machine is busy.
    budget_ns: AtomicU32,
    /// Waits started at a zero budget (every [`PROBE_EVERY`]th probes).
    unspun: AtomicU32,
}

impl Learner {
    /// A site that has learned nothing yet: full budget.
    pub const fn new() -> Self {
        Learner { budget_ns: AtomicU32::new(SPIN_NS), unspun: AtomicU32::new(0) }
    }

    /// The spin for a wait starting now on a busy (or unknown) machine:
    /// the budget, or a probe once every [`PROBE_EVERY`] waits at zero.
    fn spin(&self) -> Duration {
        let b = self.budget_ns.load(Ordering::Relaxed);
        if b > 0 {
            return Duration::from_nanos(u64::from(b));
        }
        if self.unspun.fetch_add(1, Ordering::Relaxed) % PROBE_EVERY == 0 {
            PROBE
        } else {
            Duration::ZERO
        }
    }

    /// Records a spin that paid (the wait ended while spinning) or not.
    fn record(&self, paid: bool) {
        // A lost update between two threads only delays the learning.
        let b = self.budget_ns.load(Ordering::Relaxed);
        self.budget_ns.store(learn(b, paid), Ordering::Relaxed);
    }

    /// The budget now (for tests and diagnostics).
    pub fn budget(&self) -> Duration {
        Duration::from_nanos(u64::from(self.budget_ns.load(Ordering::Relaxed)))
    }
}

impl Default for Learner {
    fn default() -> Self {
        Self::new()
    }
}

/// The learning rule: a budget after a spin that paid (times four, at
/// least [`STEP`], at most [`SPIN`]) or did not (halved, zero below
/// [`STEP`]). In the logarithm a paid spin weighs two unpaid ones: the
/// budget grows while more than a third of the spins pay. A third, not a
/// half, because the costs are not even: a spin that does not pay loses
/// at most [`SPIN`], one that pays saves a sleep and a wake-up (50-100 µs
/// here).
pub const fn learn(budget_ns: u32, paid: bool) -> u32 {
    if paid {
        let b = budget_ns.saturating_mul(4);
        if b > SPIN_NS {
            SPIN_NS
        } else if b < STEP_NS {
            STEP_NS
        } else {
            b
        }
    } else if budget_ns / 2 < STEP_NS {
        0
    } else {
        budget_ns / 2
    }
}

/// The learner of the waits that name none (`Backoff::new`).
static GENERAL: Learner = Learner::new();

/// Whether the machine has an idle CPU, from the count of runnable threads
/// (itself included) and of online CPUs: a spinner then takes nobody's
/// core.
pub const fn has_idle_cpu(runnable: u32, cpus: u32) -> bool {
    runnable <= cpus
}

/// The count of runnable threads in `/proc/loadavg` ("0.50 0.40 0.30 3/512
/// 4242": the 3).
pub fn parse_runnable(loadavg: &str) -> Option<u32> {
    loadavg.split_whitespace().nth(3)?.split('/').next()?.parse().ok()
}

/// The machine's last verdict: `(ms of CLOCK_MONOTONIC) << 2 | state`,
/// state 0 none yet, 1 an idle CPU, 2 none idle, 3 unknown (no `/proc`).
static LOAD: AtomicU64 = AtomicU64::new(0);
/// Online CPUs, 0 until first read. An atomic, not a `OnceLock`: a child
/// forked while another thread initialised a `OnceLock` waited for ever at
/// its first wait (stop 23: a pool worker hung before its first task; see
/// `sys::once`). Two threads reading it at once both store the same value.
static CPUS: AtomicU32 = AtomicU32::new(0);

fn online_cpus() -> u32 {
    match CPUS.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: sysconf has no memory-safety preconditions.
            let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
            let n = u32::try_from(n).unwrap_or(1).max(1);
            CPUS.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
}

/// Milliseconds of CLOCK_MONOTONIC (the clock `Instant` reads: no epoch to
/// keep, so nothing to initialise).
fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to fill; CLOCK_MONOTONIC exists on
    // every Linux (a failure leaves zeros: one more read of /proc later).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let ms = u64::try_from(ts.tv_nsec / 1_000_000).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(ms).min(u64::MAX >> 2)
}

/// True when the machine had an idle CPU at the last check (at most
/// [`LOAD_CHECK_EVERY`] ago; one thread of the process reads it again).
fn machine_has_idle_cpu() -> bool {
    let cpus = online_cpus();
    let ms = monotonic_ms();
    let seen = LOAD.load(Ordering::Relaxed);
    let every = LOAD_CHECK_EVERY.as_millis() as u64;
    if seen & 3 != 0 && ms.saturating_sub(seen >> 2) < every {
        return seen & 3 == 1;
    }
    // One reader per period: the others keep the old verdict meanwhile.
    let claimed = (ms << 2) | if seen & 3 == 0 { 3 } else { seen & 3 };
    if LOAD.compare_exchange(seen, claimed, Ordering::Relaxed, Ordering::Relaxed).is_err() {
        return seen & 3 == 1;
    }
    let state = match std::fs::read_to_string("/proc/loadavg").ok().as_deref().and_then(parse_runnable) {
        Some(r) if has_idle_cpu(r, cpus) => 1,
        Some(_) => 2,
        None => 3,
    };
    LOAD.store((ms << 2) | state, Ordering::Relaxed);
    state == 1
}

/// The state of one wait: created when the wait starts (free: the clock is
/// first read at the first failed attempt, when the spin is chosen), asked
/// [`Backoff::next`] after each failed attempt; dropped when the wait ends,
/// when it tells its site whether the spin paid.
#[derive(Debug)]
pub struct Backoff {
    /// None: chosen at the first failed attempt (adaptive); Some: fixed.
    spin: Option<Duration>,
    learner: Option<&'static Learner>,
    spin_end: Option<Instant>,
    step: u32,
    /// Whether this wait spun (a budget above zero) and then slept.
    spun: bool,
    slept: bool,
    timed_out: bool,
}

impl Backoff {
    /// An adaptive wait of no particular kind.
    pub const fn new() -> Self {
        Self::adaptive(&GENERAL)
    }

    /// An adaptive wait that learns with `learner` (one per kind of wait).
    pub const fn adaptive(learner: &'static Learner) -> Self {
        Backoff {
            spin: None,
            learner: Some(learner),
            spin_end: None,
            step: 0,
            spun: false,
            slept: false,
            timed_out: false,
        }
    }

    /// A wait that spins for `spin` (zero: sleep at once), whatever the
    /// machine does, and learns nothing.
    pub const fn with_spin(spin: Duration) -> Self {
        Backoff {
            spin: Some(spin),
            learner: None,
            spin_end: None,
            step: 0,
            spun: false,
            slept: false,
            timed_out: false,
        }
    }

    fn choose_spin(&self) -> Duration {
        match (self.spin, self.learner) {
            (Some(d), _) => d,
            (None, _) if machine_has_idle_cpu() => SPIN,
            (None, Some(l)) => l.spin(),
            (None, None) => SPIN,
        }
    }

    /// After a failed attempt: [`Next::TimedOut`] once `deadline` has
    /// passed, else [`Next::Retry`] (after a pause) while the spin lasts,
    /// then [`Next::Sleep`].
    pub fn next(&mut self, deadline: Deadline) -> Next {
        let now = Instant::now();
        if deadline.instant().is_some_and(|d| now >= d) {
            self.timed_out = true;
            return Next::TimedOut;
        }
        let end = match self.spin_end {
            Some(end) => end,
            None => {
                let spin = self.choose_spin();
                self.spun = !spin.is_zero();
                *self.spin_end.insert(now + spin)
            }
        };
        if now >= end {
            self.slept = true;
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

impl Drop for Backoff {
    fn drop(&mut self) {
        // A wait that spun and ended (not by its deadline) tells its site
        // whether the spin paid.
        if let Some(l) = self.learner {
            if self.spun && !self.timed_out {
                l.record(!self.slept);
            }
        }
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
    use proptest::prelude::*;

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

    #[test]
    fn spins_that_do_not_pay_bring_the_budget_to_zero_then_one_wait_in_probe_every_probes() {
        let l = Learner::new();
        let mut halvings = 0;
        while l.budget() > Duration::ZERO {
            l.record(false);
            halvings += 1;
        }
        assert_eq!(halvings, 4, "20 -> 10 -> 5 -> 2.5 -> 0 µs");
        let spins: Vec<Duration> = (0..2 * PROBE_EVERY).map(|_| l.spin()).collect();
        assert_eq!(spins.iter().filter(|d| **d == PROBE).count(), 2);
        assert!(spins.iter().all(|d| *d == PROBE || d.is_zero()));
    }

    #[test]
    fn spins_that_pay_bring_the_budget_back_to_the_full_spin() {
        let l = Learner::new();
        for _ in 0..10 {
            l.record(false);
        }
        let mut paid = 0;
        while l.budget() < SPIN {
            l.record(true);
            paid += 1;
        }
        assert_eq!(paid, 3, "0 -> 2 -> 8 -> 20 µs");
        l.record(true);
        assert_eq!(l.budget(), SPIN);
    }

    #[test]
    fn one_spin_in_three_paying_keeps_a_budget_and_one_in_four_does_not() {
        let run = |period: usize| {
            let mut b = SPIN_NS;
            let mut low = SPIN_NS;
            for i in 0..400 {
                b = learn(b, i % period == 0);
                if i > 100 {
                    low = low.min(b);
                }
            }
            low
        };
        assert!(run(3) >= SPIN_NS / 4, "{}", run(3));
        assert_eq!(run(4), 0);
    }

    #[test]
    fn a_wait_that_slept_after_its_spin_is_recorded_as_not_paying() {
        static L: Learner = Learner::new();
        let before = L.budget();
        {
            let mut b = Backoff::adaptive(&L);
            while b.next(Deadline::NEVER) == Next::Retry {}
        }
        // The machine may have had an idle CPU (a full spin) or not (the
        // budget): either way the spin did not pay.
        assert_eq!(L.budget(), Duration::from_nanos(u64::from(learn(before.as_nanos() as u32, false))));
        {
            let mut b = Backoff::adaptive(&L);
            assert_eq!(b.next(Deadline::NEVER), Next::Retry); // then the attempt succeeds
        }
        assert_eq!(L.budget().as_nanos() as u32, learn(learn(before.as_nanos() as u32, false), true));
    }

    #[test]
    fn a_wait_that_timed_out_or_never_spun_teaches_nothing() {
        static L: Learner = Learner::new();
        {
            let mut b = Backoff::adaptive(&L);
            assert_eq!(b.next(Deadline::now()), Next::TimedOut);
        }
        {
            let _unused = Backoff::adaptive(&L);
        }
        assert_eq!(L.budget(), SPIN);
    }

    #[test]
    fn the_runnable_count_is_read_from_proc_loadavg() {
        assert_eq!(parse_runnable("0.50 0.40 0.30 3/512 4242\n"), Some(3));
        assert_eq!(parse_runnable("12.1 9.5 4.0 17/1024 99"), Some(17));
        assert_eq!(parse_runnable(""), None);
        assert_eq!(parse_runnable("0.5 0.4 0.3 x/5 1"), None);
        assert!(has_idle_cpu(2, 2) && !has_idle_cpu(3, 2));
        if let Ok(text) = std::fs::read_to_string("/proc/loadavg") {
            assert!(parse_runnable(&text).is_some_and(|r| r >= 1), "{text}");
        }
    }

    proptest! {
        #[test]
        fn the_budget_stays_within_zero_and_spin_and_moves_the_way_of_the_outcome(
            start in 0u32..=SPIN_NS, outcomes in proptest::collection::vec(any::<bool>(), 0..200)
        ) {
            let mut b = start;
            for paid in outcomes {
                let next = learn(b, paid);
                prop_assert!(next <= SPIN_NS);
                prop_assert!(next == 0 || next >= STEP_NS);
                if paid {
                    prop_assert!(next >= b.min(SPIN_NS) && next <= (4 * b).clamp(STEP_NS, SPIN_NS));
                } else {
                    prop_assert!(next <= b / 2);
                }
                b = next;
            }
        }

        #[test]
        fn after_k_unpaid_spins_in_a_row_the_budget_is_at_most_spin_over_two_to_the_k(k in 0u32..8) {
            let mut b = SPIN_NS;
            for _ in 0..k {
                b = learn(b, false);
            }
            prop_assert!(b <= SPIN_NS >> k);
        }
    }
}
